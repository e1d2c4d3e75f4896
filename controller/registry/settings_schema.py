"""The schema of `ccci.yaml` as data: each key's type, default, description and examples."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from controller.registry.schemas import NAME
from controller.util.names import FORGE_REPO, HOST_RE

HOST = HOST_RE.pattern

MEMORY = r"^[0-9]+(\.[0-9]+)?[bkmgBKMG]?$"
# A secret's file: an absolute path, or a systemd credential of the unit (util/credentials.py).
SECRET_FILE = r"^(/|\$CREDENTIALS_DIRECTORY/[^/]+$)"
# The host policy's grants (controller/runtime/policy.py names what each allows).
GRANT_PATTERN = (r"^(docker_socket|host_network|privileged|sysctls|pid_host|ipc_host|userns_host|devices|"
                 r"ports|security_opt|volume_driver|bind:/[^\s]*|cap_add:[A-Z_]{1,40}|"
                 r"external:(network|secret|config):[A-Za-z0-9][A-Za-z0-9_.-]{0,200})$")

# Every key carries `description` and `examples`, and `default` where leaving it out means a
# value; the loader, the `ccci init` template and docs/settings.md all read them from here, so
# they cannot disagree. A key with no `default` is None when the file leaves it out.

RECIPE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source"],
    "description": "One recipe the controller may test; only `source` is required.",
    "examples": [{"source": "https://git.example.org/recipes/notes.git", "sso": "keycloak"}],
    "properties": {
        "source": {
            "type": "string", "minLength": 1, "maxLength": 1000,
            "description": "A local path or git URL of the recipe's repository.",
            "examples": ["https://git.example.org/recipes/notes.git", "/srv/recipes/notes"],
        },
        "track": {
            "type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$",
            "default": "main",
            "description": "The tracked line the sweep and canonical follow: a branch name, or `tags` "
                           "for the recipe's release tags.",
            "examples": ["tags"],
        },
        "sso": {
            "enum": ["keycloak", None],
            "description": "`keycloak`: each run gets its own realm on the warm Keycloak. Unset: the "
                           "recipe needs no SSO.",
            "examples": ["keycloak"],
        },
        "timeout_s": {
            "type": "integer", "minimum": 10, "maximum": 86400,
            "default": 600,
            "description": "Deadline in seconds for one run, from deploy to verdict.",
            "examples": [1800],
        },
        "stability_s": {
            "type": "number", "minimum": 0, "maximum": 3600,
            "default": 5.0,
            "description": "Seconds every service must stay converged, with no task restarting, "
                           "before the checks start (not asked of a quick run's reattach of the "
                           "known-good, only of what is judged).",
            "examples": [20.0],
        },
        "http": {
            "type": "object",
            "additionalProperties": False,
            "description": "The service the HTTP probe reaches, published on a free host port. "
                           "By default the service and port the recipe's traefik labels route to, "
                           "else `app` and 80.",
            "examples": [{"service": "web", "port": 8080, "path": "/healthz"}],
            "properties": {
                "service": {
                    "type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                    "description": "The recipe's service that answers HTTP. Unset: the one its traefik "
                                   "labels route to, else `app`.",
                    "examples": ["web"],
                },
                "port": {
                    "type": "integer", "minimum": 1, "maximum": 65535,
                    "description": "That service's container port. Unset: the port from its traefik "
                                   "labels, else 80.",
                    "examples": [8080],
                },
                "path": {
                    "type": "string", "pattern": "^/",
                    "default": "/",
                    "description": "The path the HTTP probe requests; any answer below 500 passes.",
                    "examples": ["/healthz"],
                },
                "enabled": {
                    "type": "boolean",
                    "default": True,
                    "description": "`false`: the recipe serves no HTTP, so no port is published and "
                                   "no probe runs.",
                    "examples": [False],
                },
            },
        },
        "assert": {
            "type": "string", "minLength": 1, "maxLength": 300,
            "default": "tests/ccci-assert",
            "description": "The recipe's own assert executable, relative to the recipe; exit 0 "
                           "passes. A recipe that does not ship it skips this check.",
            "examples": ["ci/assert.sh"],
        },
        "assert_timeout_s": {
            "type": "integer", "minimum": 1, "maximum": 86400,
            "default": 300,
            "description": "Seconds the custom assert may run before it fails.",
            "examples": [600],
        },
        "warm_hosts": {
            "type": "array",
            "items": {"type": "string", "pattern": HOST},
            "uniqueItems": True,
            "default": [],
            "description": "The CI hosts (their `--host` names) that keep this recipe's canonical "
                           "warm: each rewarms it when the known-good moves, so quick runs can go "
                           "to any of them. Empty: the host that ran the promoting cold run.",
            "examples": [["ci-1", "ci-2"]],
        },
        "follow_up_cold": {
            "type": "boolean",
            "default": False,
            "description": "`true`: a quick run that fails files a cold run of the same commit (its "
                           "request says `follow_up_of`, its result names it as `follow_up`), so the "
                           "pull request learns whether the upgrade or the fresh install breaks. The "
                           "cold run is requested by the quick run's requester and needs "
                           "`authority.cold` like any other.",
            "examples": [True],
        },
        "hot": {
            "type": "boolean",
            "default": False,
            "description": "`true`: keep the warm canonical running at its known-good between quick "
                           "runs, so a quick run starts with the upgrade; after its verdict the app is "
                           "undeployed, restored and deployed again at the known-good. Snapshots and "
                           "restores still happen only while nothing runs. `false`: data-warm (the "
                           "volumes are kept, the app is undeployed between runs). Not used for a "
                           "recipe with `sso` (its runs each get their own realm).",
            "examples": [True],
        },
        "upgrade_from": {
            "type": "integer", "minimum": 1, "maximum": 20,
            "description": "How many of this recipe's latest release tags an upgrade run "
                           "(`!testme --upgrade`) tests the PR head against, over `upgrade.from_tags`.",
            "examples": [4],
        },
        "forge_repo": {
            "type": "string", "pattern": FORGE_REPO,
            "description": "The recipe's repository on the forge (`owner/name`): `!testme` comments on "
                           "its pull requests file runs, and verdicts go back to them. Unset: the "
                           "forge is not watched for this recipe.",
            "examples": ["coop-cloud/notes"],
        },
        "policy": {
            "type": "object",
            "additionalProperties": False,
            "description": "What this recipe's stack may ask of the CI host beyond what every run "
                           "gets. A PR head is outside code: a bind mount, the Docker socket, the "
                           "host network, capabilities and the rest are refused (a `rejected` "
                           "result, cause `policy`) unless granted here, by reviewers.",
            "examples": [{"allow": ["docker_socket", "bind:/srv/backups", "cap_add:NET_ADMIN"]}],
            "properties": {
                "allow": {
                    "type": "array",
                    "items": {"type": "string", "pattern": GRANT_PATTERN},
                    "default": [],
                    "description": "Grants: docker_socket, bind:<host path> (and below), host_network, "
                                   "cap_add:<CAP>, security_opt, sysctls, pid_host, ipc_host, userns_host, "
                                   "privileged, devices, ports, volume_driver, "
                                   "external:<network|secret|config>:<name>.",
                    "examples": [["docker_socket", "bind:/srv/backups"]],
                },
            },
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "description": "This recipe's resource limits per service, over `limits.service_*`.",
            "examples": [{"memory": "2g", "cpus": 2}],
            "properties": {
                "memory": {"type": "string", "pattern": MEMORY,
                           "description": "Memory per service (`512M`, `2g`).", "examples": ["2g"]},
                "cpus": {"type": "number", "exclusiveMinimum": 0, "maximum": 256,
                         "description": "CPUs per service.", "examples": [2]},
                "pids": {"type": "integer", "minimum": 16, "maximum": 1000000,
                         "description": "Processes per service.", "examples": [4096]},
            },
        },
        "env": {
            "type": "object",
            "additionalProperties": {"type": ["string", "integer", "number", "boolean"]},
            "default": {},
            "description": "Extra stack environment, applied over the recipe's `.env.sample` and "
                           "`abra.sh` exports.",
            "examples": [{"SEED_ROWS": 5000, "LOG_LEVEL": "debug"}],
        },
    },
}

SETTINGS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["base_domain"],
    "properties": {
        "base_domain": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$",
            "description": "Apps get the domain `<app>.<base_domain>`: cold runs `<recipe>-<6 hex>`, "
                           "canonicals `warm-<recipe>`. The only required key.",
            "examples": ["ci.example.org"],
        },
        "identity": {
            "type": "object",
            "additionalProperties": False,
            "description": "Who the controller commits as (results, canonicals, snapshot index).",
            "examples": [{"name": "ccci", "email": "ccci@ci.example.org"}],
            "properties": {
                "name": {
                    "type": "string", "minLength": 1, "maxLength": 100,
                    "default": "ccci",
                    "description": "The author name of the controller's commits; the environment "
                                   "variable `CCCI_GIT_NAME` overrides it.",
                    "examples": ["ccci-ci01"],
                },
                "email": {
                    "type": "string", "minLength": 3, "maxLength": 200,
                    "default": "ccci@localhost",
                    "description": "The author email of the controller's commits; `ccci audit` accepts "
                                   "results and canonical changes only from it, as this file says at "
                                   "each commit. `CCCI_GIT_EMAIL` overrides it (for audit too).",
                    "examples": ["ccci@ci.example.org"],
                },
            },
        },
        "recipes": {
            "type": ["object", "null"],
            "propertyNames": {"pattern": NAME},
            "additionalProperties": RECIPE,
            "default": {},
            "description": "The recipes the controller tests, by name (lower-case letters, digits, "
                           "dashes), each with where its git repository lives and its options.",
            "examples": [{"notes": {"source": "https://git.example.org/recipes/notes.git",
                                    "track": "main", "timeout_s": 600}}],
        },
        "authority": {
            "type": "object",
            "additionalProperties": False,
            "description": "Who may request which kind of run. Each list holds user names, `'*'` "
                           "(anyone), and for comments on the forge `org:<org>` (its members), "
                           "`team:<org>/<team>` and `collaborator` (write access to the recipe's "
                           "repository). A name or `'*'` admits any request that names it (whoever "
                           "can push to the registry can); a forge rule admits only requests the "
                           "forge intake filed. The nightly sweep requests cold runs as `sweep`.",
            "examples": [{"cold": ["org:coop-cloud", "sweep"], "quick": ["team:coop-cloud/maintainers"]}],
            "properties": {
                "cold": {
                    "type": "array", "items": {"type": "string"},
                    "default": [],
                    "description": "Who may request a cold run (fresh deploy; its pass can advance the "
                                   "canonical). Empty: nobody.",
                    "examples": [["alice", "bob", "sweep"], ["*"]],
                },
                "quick": {
                    "type": "array", "items": {"type": "string"},
                    "default": [],
                    "description": "Who may request a quick run (an upgrade of the warm canonical, "
                                   "rolled back after). Empty: nobody.",
                    "examples": [["alice"]],
                },
                "upgrade": {
                    "type": "array", "items": {"type": "string"},
                    "description": "Who may request an upgrade run (the PR head deployed as an "
                                   "upgrade from each of the recipe's latest release tags, on "
                                   "throw-away apps; it never promotes). Unset: whoever `cold` "
                                   "admits, since it costs the host what a few cold runs do and "
                                   "touches nothing warm. Empty: nobody.",
                    "examples": [["team:coop-cloud/maintainers"], []],
                },
            },
        },
        "quick": {
            "type": "object",
            "additionalProperties": False,
            "description": "Quick runs: a PR deployed as an upgrade of the warm canonical.",
            "examples": [{"no_canonical": "reject"}],
            "properties": {
                "no_canonical": {
                    "enum": ["fallback-cold", "reject"],
                    "default": "fallback-cold",
                    "description": "A quick request for a recipe with no canonical, or that no host "
                                   "of the fleet can take (none holds a current last-known-good "
                                   "snapshot, or those that do left it waiting past "
                                   "`quick.host_wait_s`): `fallback-cold` runs it cold instead "
                                   "(on any host), `reject` refuses it.",
                    "examples": ["reject"],
                },
                "host_wait_s": {
                    "type": "number", "minimum": 0, "maximum": 604800,
                    "default": 900.0,
                    "description": "Seconds a quick request waits, from its filing (its run id's "
                                   "time), for a host that holds the recipe's current snapshot to "
                                   "claim it; after that `no_canonical` decides, on any host.",
                    "examples": [3600.0],
                },
            },
        },
        "upgrade": {
            "type": "object",
            "additionalProperties": False,
            "description": "Upgrade runs: the PR head deployed as an upgrade from each of the "
                           "recipe's latest release tags (`X.Y.Z+<upstream>`), each on a throw-away "
                           "app initialised by that tag.",
            "examples": [{"from_tags": 3}],
            "properties": {
                "from_tags": {
                    "type": "integer", "minimum": 1, "maximum": 20,
                    "default": 2,
                    "description": "How many release tags (the newest by version, from the PR head's "
                                   "history) an upgrade run starts from, one row each; "
                                   "`recipes.<name>.upgrade_from` overrides it per recipe.",
                    "examples": [3],
                },
            },
        },
        "sweep": {
            "type": "object",
            "additionalProperties": False,
            "description": "The nightly sweep: one cold run of each recipe's tracked-line head.",
            "examples": [{"at": "03:30", "timezone": "Europe/Berlin", "max_tests": 20}],
            "properties": {
                "at": {
                    "type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$",
                    "default": "02:00",
                    "description": "The time of day (`HH:MM`, in `timezone`) the sweep is due; a "
                                   "controller that was down then sweeps when it starts.",
                    "examples": ["03:30"],
                },
                "timezone": {
                    "type": "string",
                    "default": "UTC",
                    "description": "The IANA time zone of `at`.",
                    "examples": ["Europe/Berlin"],
                },
                "max_tests": {
                    "type": "integer", "minimum": 0, "maximum": 1000,
                    "default": 10,
                    "description": "At most this many recipes per sweep; 0 sweeps none.",
                    "examples": [25],
                },
                "order": {
                    "enum": ["stalest-first", "alphabetical"],
                    "default": "stalest-first",
                    "description": "Which recipes come first when there are more than `max_tests`: "
                                   "`stalest-first` (the longest without a cold run) or `alphabetical`.",
                    "examples": ["alphabetical"],
                },
            },
        },
        "warm": {
            "type": "object",
            "additionalProperties": False,
            "description": "Live-warm infrastructure that runs share.",
            "examples": [{"keycloak": {"mode": "external", "url": "https://sso.example.org",
                                       "admin_secret_file": "$CREDENTIALS_DIRECTORY/keycloak-admin-password"}}],
            "properties": {
                "keycloak": {
                    "type": "object",
                    "additionalProperties": False,
                    "description": "The live-warm Keycloak that serves SSO to runs. Its admin password "
                                   "comes from `admin_secret_file` or the variable `admin_secret_env`, "
                                   "never from git.",
                    "examples": [{"mode": "managed", "recipe": "keycloak", "port": 8180}],
                    "properties": {
                        "mode": {
                            "enum": ["external", "managed", "off"],
                            "default": "off",
                            "description": "`external`: one you run, at `url`; `managed`: the controller "
                                           "deploys `recipe` as `app` and keeps it upgraded; `off`: "
                                           "none.",
                            "examples": ["external"],
                        },
                        "url": {
                            "type": "string", "pattern": "^https?://",
                            "description": "Its base URL: required when external; when managed, "
                                           "overrides `http://127.0.0.1:<port>`.",
                            "examples": ["https://sso.example.org"],
                        },
                        "admin_user": {
                            "type": "string", "minLength": 1,
                            "default": "admin",
                            "description": "The admin user (of the master realm) the controller logs in as.",
                            "examples": ["ccci-admin"],
                        },
                        "admin_secret_file": {
                            "type": "string", "minLength": 1,
                            "description": "A file holding the admin password; when set, "
                                           "`admin_secret_env` is not read. "
                                           "`$CREDENTIALS_DIRECTORY/<name>`: the systemd credential "
                                           "`<name>` of the unit that reads it (`LoadCredential=`).",
                            "examples": ["$CREDENTIALS_DIRECTORY/keycloak-admin-password", "/etc/ccci/kc-admin"],
                        },
                        "admin_secret_env": {
                            "type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$",
                            "default": "CCCI_KEYCLOAK_ADMIN_PASSWORD",
                            "description": "The environment variable holding the admin password, when "
                                           "there is no `admin_secret_file`.",
                            "examples": ["KC_ADMIN_PASSWORD"],
                        },
                        "recipe": {
                            "type": "string", "pattern": NAME,
                            "default": "keycloak",
                            "description": "Managed mode: the recipe deployed as the live Keycloak; "
                                           "it must be under `recipes`.",
                            "examples": ["keycloak"],
                        },
                        "app": {
                            "type": "string", "pattern": NAME,
                            "default": "infra-keycloak",
                            "description": "Managed mode: the live app's name (never `warm-*`).",
                            "examples": ["infra-sso"],
                        },
                        "port": {
                            "type": "integer", "minimum": 1, "maximum": 65535,
                            "default": 8180,
                            "description": "Managed mode: the host port it is published on.",
                            "examples": [8443],
                        },
                        "fallback": {
                            "enum": ["co-deploy", "fail"],
                            "default": "co-deploy",
                            "description": "When the warm Keycloak is down: `co-deploy` a Keycloak for "
                                           "the run, or `fail` the run.",
                            "examples": ["fail"],
                        },
                    },
                },
            },
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "description": "Host safety: parallelism, free disk, and what prune (`ccci prune`, and "
                           "`serve` on its own) may remove.",
            "examples": [{"max_parallel_cold": 4, "disk_min_free_gb": 50, "prune_images": "unused"}],
            "properties": {
                "max_parallel_cold": {
                    "type": "integer", "minimum": 1, "maximum": 64,
                    "default": 2,
                    "description": "How many cold runs one controller runs at once (an upgrade run counts as one: "
                                   "it deploys its throw-away apps one at a time).",
                    "examples": [4],
                },
                "disk_min_free_gb": {
                    "type": "number", "minimum": 0,
                    "default": 10.0,
                    "description": "Free space (GiB) to keep: a snapshot needs a full copy plus this "
                                   "much, and `serve` prunes and raises a `disk-low` alert below it.",
                    "examples": [50],
                },
                "prune_images": {
                    "enum": ["dangling", "unused", "none"],
                    "default": "dangling",
                    "description": "Which images prune removes: `dangling` (untagged, no container), "
                                   "`unused` (also tagged images nothing live or warm needs; for hosts "
                                   "that can pull again) or `none`.",
                    "examples": ["unused"],
                },
                "prune_keep_images": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "maxLength": 256},
                    "default": [],
                    "description": "Image name patterns (shell-style, `*` and `?`) prune never "
                                   "removes.",
                    "examples": [["postgres:*", "registry.example.org/base/*"]],
                },
                "service_memory": {
                    "type": "string", "pattern": MEMORY,
                    "default": "2g",
                    "description": "The memory limit of every service a run deploys (a PR cannot "
                                   "starve the host or the other runs); a service killed by it fails "
                                   "its run with cause `limit`. `recipes.<r>.limits.memory` overrides.",
                    "examples": ["512M"],
                },
                "service_cpus": {
                    "type": "number", "exclusiveMinimum": 0, "maximum": 256,
                    "default": 2.0,
                    "description": "The CPU limit of every service a run deploys.",
                    "examples": [0.5],
                },
                "service_pids": {
                    "type": "integer", "minimum": 16, "maximum": 1000000,
                    "default": 4096,
                    "description": "The process limit of every service a run deploys (applied where "
                                   "the recipe's compose version allows it: 3.9 or later).",
                    "examples": [512],
                },
                "prune_interval_s": {
                    "type": "number", "minimum": 60,
                    "default": 3600.0,
                    "description": "Seconds between the prunes `serve` does on its own (it also "
                                   "prunes whenever free space is low).",
                    "examples": [21600.0],
                },
            },
        },
        "forge": {
            "type": "object",
            "additionalProperties": False,
            "dependentRequired": {"url": ["token_file"]},
            "description": "The Gitea or Forgejo that hosts the recipes: `ccci forge webhook` or `ccci "
                           "forge poll` turn `!testme` comments on pull requests into runs, and every "
                           "run a comment asked for reports back (a commit status and one comment). "
                           "Unset `url`: no forge. Token and webhook secret come from files, never "
                           "from git.",
            "examples": [{"url": "https://git.coopcloud.tech", "token_file": "$CREDENTIALS_DIRECTORY/forge-token",
                          "webhook_secret_file": "$CREDENTIALS_DIRECTORY/forge-webhook-secret"}],
            "properties": {
                "kind": {
                    "enum": ["gitea", "forgejo"],
                    "default": "gitea",
                    "description": "Which forge: both speak the same REST API v1.",
                    "examples": ["forgejo"],
                },
                "url": {
                    "type": "string", "pattern": "^https?://[^/?#]+(/[^?#]*)?$",
                    "description": "The forge's base URL; its API is at `<url>/api/v1`.",
                    "examples": ["https://git.coopcloud.tech"],
                },
                "token_file": {
                    "type": "string", "pattern": SECRET_FILE,
                    "description": "A file holding the bot's API token (scopes: read organization, "
                                   "write issue, write repository for statuses): an absolute path, or "
                                   "`$CREDENTIALS_DIRECTORY/<name>`, the systemd credential `<name>` of "
                                   "the unit that reads it (`LoadCredential=`).",
                    "examples": ["$CREDENTIALS_DIRECTORY/forge-token", "/etc/ccci/forge-token"],
                },
                "webhook_secret_file": {
                    "type": "string", "pattern": SECRET_FILE,
                    "description": "A file holding the webhook's secret (a path or a credential, as "
                                   "`token_file`); `ccci forge webhook` refuses every delivery whose "
                                   "signature does not match it.",
                    "examples": ["$CREDENTIALS_DIRECTORY/forge-webhook-secret"],
                },
                "context": {
                    "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$",
                    "default": "ccci",
                    "description": "Commit statuses are named `<context>/<mode>`: require "
                                   "`<context>/cold` in branch protection; `<context>/quick` informs.",
                    "examples": ["ci"],
                },
                "results_url": {
                    "type": "string", "pattern": "^https?://.*[{]path[}]",
                    "description": "Where a result file can be read, with `{path}` for its path in the "
                                   "registry; the status and comment link to it.",
                    "examples": ["https://git.coopcloud.tech/ci/registry/src/branch/main/{path}"],
                },
                "poll_interval_s": {
                    "type": "number", "minimum": 1, "maximum": 3600,
                    "default": 30.0,
                    "description": "Seconds between polls of `ccci forge poll`.",
                    "examples": [10.0],
                },
            },
        },
        "serve": {
            "type": "object",
            "additionalProperties": False,
            "description": "The daemon, `ccci serve`.",
            "examples": [{"poll_interval_s": 10.0, "reap_interval_s": 300.0}],
            "properties": {
                "poll_interval_s": {
                    "type": "number", "minimum": 0.1, "maximum": 3600,
                    "default": 30.0,
                    "description": "Seconds between fetches of the registry's remote; "
                                   "`ccci serve --poll-interval` overrides it.",
                    "examples": [10.0],
                },
                "reap_interval_s": {
                    "type": "number", "minimum": 10, "maximum": 86400,
                    "default": 600.0,
                    "description": "Seconds between sweeps of the per-run realms whose run is no "
                                   "longer in flight (also done at start-up); only with a warm "
                                   "Keycloak.",
                    "examples": [300.0],
                },
                "deadline_grace_s": {
                    "type": "integer", "minimum": 0, "maximum": 86400,
                    "default": 1800,
                    "description": "Seconds added to a run's `timeout_s` for its claim's deadline "
                                   "(teardown, restore and rollback happen after the timeout). Past "
                                   "the deadline, another host marks a run whose host never answered "
                                   "`aborted`.",
                    "examples": [3600],
                },
                "refile_abandoned": {
                    "type": "boolean",
                    "default": False,
                    "description": "When another host marks an abandoned run `aborted`, file it "
                                   "again once (a new request, `refiled_from` the old run; a re-filed "
                                   "run is never re-filed). Every host must run a ccci that knows "
                                   "`refiled_from`.",
                    "examples": [True],
                },
                "reconcile_interval_s": {
                    "type": "number", "minimum": 60, "maximum": 604800,
                    "default": 3600.0,
                    "description": "Seconds between reconciles of the live-warm Keycloak (a health "
                                   "check when external; deploy and gated upgrades when managed), "
                                   "besides the one before each nightly sweep.",
                    "examples": [21600.0],
                },
            },
        },
    },
}


def with_defaults(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a validated settings document with every key it leaves out that has a default."""
    filled: dict[str, Any] = _fill(document, SETTINGS)
    return filled


def defaults() -> dict[str, Any]:
    """Every default, as a document would spell it out (base_domain, which has none, absent)."""
    return with_defaults({})


def _fill(value: Any, schema: dict[str, Any]) -> Any:
    if value is None and "default" in schema:
        return copy.deepcopy(schema["default"])  # `recipes:` with nothing under it
    if not isinstance(value, dict):
        return value
    properties: dict[str, Any] = schema.get("properties", {})
    out = dict(value)
    for key, sub in properties.items():
        if key in out:
            out[key] = _fill(out[key], sub)
        elif "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        elif "properties" in sub:
            out[key] = _fill({}, sub)
    entry = schema.get("additionalProperties")
    if isinstance(entry, dict):
        for key in out.keys() - properties.keys():
            out[key] = _fill(out[key], entry)
    return out


def keys(schema: dict[str, Any] = SETTINGS, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, schema) of every key, parents first; a recipe's keys are `recipes.<name>.*`."""
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path, sub
        yield from keys(sub, f"{path}.")
        entry = sub.get("additionalProperties")
        if isinstance(entry, dict) and "properties" in entry:
            yield f"{path}.<name>", entry
            yield from keys(entry, f"{path}.<name>.")


def schema_of(path: str) -> dict[str, Any]:
    """The schema of one key by its dotted path, as `keys` names it."""
    return dict(keys())[path]
