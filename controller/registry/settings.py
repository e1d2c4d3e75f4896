"""Registry settings (`ccci.yaml`): documented dataclasses built from the validated file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.registry import schemas, settings_schema
from controller.registry.yamlio import read_untrusted
from controller.util.errors import BadInput

SETTINGS_FILE = "ccci.yaml"


@dataclass(frozen=True)
class HttpSettings:
    service: str | None = None  # the recipe's service that answers HTTP (None: see `resolve`)
    port: int | None = None  # its container port
    path: str = "/"  # what the generic HTTP probe requests
    enabled: bool = True  # false: the recipe serves no HTTP; skip the port and the probe

    def resolve(self, from_recipe: tuple[str, int] | None = None) -> tuple[str, int]:
        """(service, port): what ccci.yaml says, else what the recipe tells its proxy (traefik
        labels), else app:80."""
        service, port = from_recipe or ("app", 80)
        if self.service is not None and self.service != service:
            port = 80  # the recipe's port belongs to another service
        return self.service or service, self.port or port


@dataclass(frozen=True)
class RecipeSettings:
    name: str
    source: str  # a local path or git URL of the recipe repository
    track: str = "main"  # the tracked line: a branch name, or "tags"
    sso: str | None = None  # "keycloak": the run gets a per-run realm
    timeout_s: int = 600  # deadline for one run, deploy to verdict
    stability_s: float = 5.0  # services must stay converged this long
    http: HttpSettings = field(default_factory=HttpSettings)
    assert_path: str = "tests/ccci-assert"  # the custom assert executable in the recipe
    assert_timeout_s: int = 300
    env: dict[str, str] = field(default_factory=dict)  # extra stack env, over .env.sample


@dataclass(frozen=True)
class KeycloakSettings:
    mode: str = "off"  # external | managed | off
    url: str | None = None
    admin_user: str = "admin"
    admin_secret_file: str | None = None
    admin_secret_env: str = "CCCI_KEYCLOAK_ADMIN_PASSWORD"
    recipe: str = "keycloak"  # managed mode: the recipe deployed as the live Keycloak
    app: str = "infra-keycloak"  # managed mode: the live app's name (never `warm-*`)
    port: int = 8180  # managed mode: the host port it is published on
    fallback: str = "co-deploy"  # when the warm one is down: co-deploy one per run, or fail

    def admin_password(self) -> str | None:
        """From the secret file or the environment, never from git."""
        if self.admin_secret_file:
            try:
                return Path(self.admin_secret_file).read_text().strip()
            except OSError:
                return None
        return os.environ.get(self.admin_secret_env)


@dataclass(frozen=True)
class Settings:
    base_domain: str
    recipes: dict[str, RecipeSettings] = field(default_factory=dict)
    authority_cold: tuple[str, ...] = ()
    authority_quick: tuple[str, ...] = ()
    quick_no_canonical: str = "fallback-cold"
    sweep_at: str = "02:00"
    sweep_timezone: str = "UTC"
    sweep_max_tests: int = 10
    sweep_order: str = "stalest-first"
    keycloak: KeycloakSettings = field(default_factory=KeycloakSettings)
    max_parallel_cold: int = 2
    disk_min_free_gb: float = 10.0
    # What prune may remove of images: dangling (untagged, no container), unused (also tagged
    # images nothing live or warm needs; for hosts that can pull again), none.
    prune_images: str = "dangling"
    prune_keep_images: tuple[str, ...] = ()  # fnmatch patterns of image names prune never removes
    prune_interval_s: float = 3600.0
    identity_name: str = "ccci"
    identity_email: str = "ccci@localhost"
    poll_interval_s: float = 30.0

    def recipe(self, name: str) -> RecipeSettings:
        try:
            return self.recipes[name]
        except KeyError:
            raise BadInput(f"{SETTINGS_FILE}: at 'recipes': no recipe named {name!r}") from None

    def domain(self, app: str) -> str:
        return f"{app}.{self.base_domain}"

    def may_request(self, user: str, mode: str) -> bool:
        allowed = self.authority_cold if mode == "cold" else self.authority_quick
        return "*" in allowed or user in allowed


def settings_from_document(doc: dict[str, Any]) -> Settings:
    recipes: dict[str, RecipeSettings] = {}
    for name, raw in (doc.get("recipes") or {}).items():
        http = raw.get("http") or {}
        recipes[name] = RecipeSettings(
            name=name,
            source=raw["source"],
            track=raw.get("track", "main"),
            sso=raw.get("sso"),
            timeout_s=raw.get("timeout_s", 600),
            stability_s=float(raw.get("stability_s", 5.0)),
            http=HttpSettings(
                service=http.get("service"),
                port=http.get("port"),
                path=http.get("path", "/"),
                enabled=http.get("enabled", True),
            ),
            assert_path=raw.get("assert", "tests/ccci-assert"),
            assert_timeout_s=raw.get("assert_timeout_s", 300),
            env={k: str(v) for k, v in (raw.get("env") or {}).items()},
        )
    authority = doc.get("authority") or {}
    sweep = doc.get("sweep") or {}
    limits = doc.get("limits") or {}
    identity = doc.get("identity") or {}
    kc = (doc.get("warm") or {}).get("keycloak") or {}
    keycloak = KeycloakSettings(**{k: v for k, v in kc.items()})
    return Settings(
        base_domain=doc["base_domain"],
        recipes=recipes,
        authority_cold=tuple(authority.get("cold", ())),
        authority_quick=tuple(authority.get("quick", ())),
        quick_no_canonical=(doc.get("quick") or {}).get("no_canonical", "fallback-cold"),
        sweep_at=sweep.get("at", "02:00"),
        sweep_timezone=sweep.get("timezone", "UTC"),
        sweep_max_tests=sweep.get("max_tests", 10),
        sweep_order=sweep.get("order", "stalest-first"),
        keycloak=keycloak,
        max_parallel_cold=limits.get("max_parallel_cold", 2),
        disk_min_free_gb=float(limits.get("disk_min_free_gb", 10.0)),
        prune_images=limits.get("prune_images", "dangling"),
        prune_keep_images=tuple(limits.get("prune_keep_images", ())),
        prune_interval_s=float(limits.get("prune_interval_s", 3600.0)),
        identity_name=os.environ.get("CCCI_GIT_NAME") or identity.get("name", "ccci"),
        identity_email=os.environ.get("CCCI_GIT_EMAIL") or identity.get("email", "ccci@localhost"),
        poll_interval_s=float((doc.get("serve") or {}).get("poll_interval_s", 30.0)),
    )


def load_settings(registry_root: Path) -> Settings:
    path = registry_root / SETTINGS_FILE
    if not path.is_file():
        raise BadInput(f"{SETTINGS_FILE}: not found in {registry_root} (is this a registry? try `ccci init`)")
    doc = read_untrusted(path, SETTINGS_FILE)
    if not isinstance(doc, dict):
        raise BadInput(f"{SETTINGS_FILE}: at '(top level)': expected a mapping of settings")
    schemas.validate(doc, settings_schema.SETTINGS, SETTINGS_FILE)
    return settings_from_document(doc)


SETTINGS_TEMPLATE = """\
# ccci registry settings. Reviewed by humans; read by the controller on every pass.
# Every key is optional but base_domain.

# Apps get domains <app>.<base_domain>: cold runs <recipe>-<6 hex>, canonicals warm-<recipe>.
base_domain: ci.example.org

# Who the controller commits as (results, canonicals, snapshot index).
identity:
  name: ccci
  email: ccci@localhost

# Where each recipe's git repository lives, and per-recipe options:
#   source      a local path or git URL
#   track       the tracked line: a branch name (default main) or "tags"
#   sso         keycloak: each run gets its own realm on the warm Keycloak
#   timeout_s   deadline for one run (default 600)
#   http        {service, port, path: /}: the service the HTTP probe reaches; by default the
#               service and port the recipe's traefik labels route to, else app and 80
#   assert      the recipe's custom assert executable (default tests/ccci-assert)
recipes: {}
#  notes: {source: https://git.example.org/recipes/notes.git, track: main, timeout_s: 600}

# Who may request what; '*' allows anyone.
authority:
  cold: ['*']
  quick: []

# A quick request for a recipe with no canonical yet: fallback-cold or reject.
quick: {no_canonical: fallback-cold}

# The nightly cold sweep of each recipe's tracked line.
sweep: {at: "02:00", timezone: UTC, max_tests: 10, order: stalest-first}

# The live-warm Keycloak that serves SSO to runs: mode external (url), managed, or off.
# The admin password comes from admin_secret_file or the env var admin_secret_env, never git.
warm:
  keycloak: {mode: off}

# Host safety. A take needs a full copy plus disk_min_free_gb free. Prune (`ccci prune`, and
# `serve` every prune_interval_s or when free space drops below disk_min_free_gb) removes cold
# leftovers, dead runs' work dirs and images: prune_images dangling (default), unused (also
# tagged images no container, live service, warm app or live infra needs: for hosts that can
# pull again) or none. prune_keep_images: name patterns prune never removes.
limits: {max_parallel_cold: 2, disk_min_free_gb: 10, prune_images: dangling, prune_keep_images: []}
"""
