"""Reading a Co-op Cloud style recipe and building the controller's overlay (pure)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller.registry.settings import HttpSettings, settings_from_document
from controller.runtime.compose import interpolate, mounted_volumes, parse_env_file, proxied_service, read_layout
from controller.runtime.spec import AppIdentity, DeploySpec, overlay_document, pinned_services, secret_length, stack_env
from controller.util.errors import BadInput

COMPOSE = """\
---
version: "3.8"

x-env: &env
  - DB_HOST=db

services:
  app:
    image: git.coopcloud.tech/coop-cloud/example:1.2.3
    environment: *env
    networks: [proxy, internal]
    secrets: [db_password]
    configs:
      - source: nginx_conf
        target: /etc/nginx/nginx.conf
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost"]
    deploy:
      labels:
        - "traefik.enable=true"
        - "traefik.http.routers.${STACK_NAME}.rule=Host(`${DOMAIN}`)"
  db:
    image: postgres:15
    volumes: [postgres:/var/lib/postgresql/data]
    networks: [internal]
    secrets: [db_password]

volumes:
  postgres:
    driver_opts: {type: none}

networks:
  proxy:
    external: true
  internal:

configs:
  nginx_conf:
    name: ${STACK_NAME}_nginx_conf_${NGINX_CONF_VERSION}
    file: nginx.conf.tmpl
    template_driver: golang

secrets:
  db_password:
    external: true
    name: ${STACK_NAME}_db_password_${SECRET_DB_PASSWORD_VERSION}
"""

ENV_SAMPLE = """\
TYPE=example
DOMAIN=example.example.com
## Domain aliases
#EXTRA_DOMAINS=', `www.example.com`'
LETS_ENCRYPT_ENV=production
NGINX_CONF_VERSION=v2
SECRET_DB_PASSWORD_VERSION=v1 # length=48
export QUOTED="a b # not a comment"
COMPOSE_FILE="compose.yml:compose.smtp.yml"
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    (tmp_path / "compose.yml").write_text(COMPOSE)
    (tmp_path / "compose.smtp.yml").write_text(
        'version: "3.8"\nservices:\n  app:\n    environment:\n      - SMTP=1\n')
    (tmp_path / ".env.sample").write_text(ENV_SAMPLE)
    (tmp_path / "nginx.conf.tmpl").write_text("events {}\n")
    return tmp_path


def spec(app: str = "example-abc123") -> DeploySpec:
    return DeploySpec(AppIdentity(app, "cold", "20261129T120000-example-abc123", "f" * 40, "owner1"),
                      f"{app}.ci.test", "app", 80, 24000)


def test_env_sample_is_read_as_abra_does() -> None:
    env = parse_env_file(ENV_SAMPLE)
    assert env["SECRET_DB_PASSWORD_VERSION"] == "v1"
    assert env["QUOTED"] == "a b # not a comment"
    assert "EXTRA_DOMAINS" not in env
    assert interpolate("${STACK_NAME}_x_${V:-v9}_$$", {"STACK_NAME": "s"}) == "s_x_v9_$"


def test_env_values_name_keys_above_them_as_abra_does() -> None:
    env = parse_env_file('COMPOSE_FILE="compose.yml"\nCOMPOSE_FILE="$COMPOSE_FILE:compose.smtp.yml"\n'
                         "LITERAL='$COMPOSE_FILE'\nBRACED=${COMPOSE_FILE}:x.yml\nUNSET=$NOPE\n")
    assert env == {"COMPOSE_FILE": "compose.yml:compose.smtp.yml", "LITERAL": "$COMPOSE_FILE",
                   "BRACED": "compose.yml:compose.smtp.yml:x.yml", "UNSET": ""}


def test_the_operators_env_picks_the_overlays(recipe: Path) -> None:
    """`recipes.<r>.env` in ccci.yaml reaches file selection and object names, not only the stack."""
    layout = read_layout(recipe, {"COMPOSE_FILE": "compose.yml", "SECRET_DB_PASSWORD_VERSION": "v7",
                                  "STACK_NAME": "example-abc123", "DOMAIN": "d"})
    assert layout.compose_files == ["compose.yml"]
    assert layout.external_secrets == {"db_password": "example-abc123_db_password_v7"}


def test_abra_sh_exports_override_env_sample_and_are_never_run(recipe: Path) -> None:
    (recipe / "abra.sh").write_text(
        "export NGINX_CONF_VERSION=v3\n"
        "export APP_ENTRYPOINT_VERSION='v1'  # a comment\n"
        "abra_backup_app() {\n  export NGINX_CONF_VERSION=from-a-function\n  touch /tmp/ran\n}\n"
        "NOT_EXPORTED=x\n")
    layout = read_layout(recipe, {"STACK_NAME": "example-abc123", "DOMAIN": "d"})
    assert layout.env_sample["NGINX_CONF_VERSION"] == "v3"
    assert layout.env_sample["APP_ENTRYPOINT_VERSION"] == "v1"
    assert "NOT_EXPORTED" not in layout.env_sample
    env = stack_env(layout, spec(), {})
    assert interpolate("${STACK_NAME}_nginx_conf_${NGINX_CONF_VERSION}", env) == "example-abc123_nginx_conf_v3"


def test_http_service_and_port_come_from_traefik_labels_unless_ccci_yaml_says() -> None:
    services = {
        "db": {"image": "postgres"},
        "web": {"deploy": {"labels": [
            "traefik.enable=true",
            "traefik.http.services.${STACK_NAME}.loadbalancer.server.port=${PORT:-3000}",
        ]}},
    }
    assert proxied_service(services, {"STACK_NAME": "s"}) == ("web", 3000)
    services["web"]["deploy"]["labels"] = {"traefik.enable": "true"}
    assert proxied_service(services, {}) == ("web", 80)
    services["web"]["deploy"]["labels"] = {"traefik.enable": "false"}
    assert proxied_service(services, {}) is None
    assert http_settings().resolve(("web", 3000)) == ("web", 3000)
    assert http_settings(port=8080).resolve(("web", 3000)) == ("web", 8080)
    assert http_settings(service="app").resolve(("web", 3000)) == ("app", 80)
    assert http_settings().resolve(None) == ("app", 80)


def http_settings(**http: object) -> HttpSettings:
    """A recipe's `http` as ccci.yaml with these keys loads it."""
    doc = {"base_domain": "ci.test", "recipes": {"r": {"source": "/src", "http": http}}}
    return settings_from_document(doc).recipe("r").http


def test_layout_follows_compose_file_and_names_external_objects(recipe: Path) -> None:
    layout = read_layout(recipe, {"STACK_NAME": "example-abc123", "DOMAIN": "d"})
    assert layout.compose_files == ["compose.yml", "compose.smtp.yml"]
    assert layout.services == ["app", "db"]
    assert layout.external_secrets == {"db_password": "example-abc123_db_password_v1"}
    assert layout.external_networks == {"proxy": "proxy"}
    assert layout.healthchecked == ["app"]
    assert secret_length(layout, "db_password") == 48


def test_overlay_labels_everything_and_publishes_the_http_service(recipe: Path) -> None:
    layout = read_layout(recipe, {"STACK_NAME": "example-abc123", "DOMAIN": "d"})
    doc = overlay_document(layout, spec())
    assert doc["version"] == "3.8"
    app = doc["services"]["app"]
    for labels in (app["labels"], app["deploy"]["labels"], doc["services"]["db"]["deploy"]["labels"]):
        assert labels["ccci.app"] == "example-abc123" and labels["ccci.commit"] == "f" * 40
        assert labels["ccci.owner"] == "owner1" and labels["ccci.run"].endswith("abc123")
    assert app["ports"] == [{"target": 80, "published": 24000, "protocol": "tcp", "mode": "host"}]
    assert app["deploy"]["update_config"] == {"order": "stop-first"}
    assert "ports" not in doc["services"]["db"]
    # The CLI replaces top-level entries: the overlay restates each with labels added.
    assert doc["volumes"]["postgres"]["driver_opts"] == {"type": "none"}
    assert doc["configs"]["nginx_conf"]["file"] == "nginx.conf.tmpl"
    assert doc["configs"]["nginx_conf"]["template_driver"] == "golang"
    assert "ccci.commit" not in doc["volumes"]["postgres"]["labels"]
    assert "proxy" not in doc["networks"] and "secrets" not in doc  # external: not ours to label
    with_settings = DeploySpec(spec().identity, "example-abc123.ci.test", "app", 80, 24000,
                               env={"LETS_ENCRYPT_ENV": "staging", "STACK_NAME": "nope"})
    env = stack_env(layout, with_settings, {"CCCI_SSO_REALM": "example-abc123"})
    assert (env["STACK_NAME"], env["DOMAIN"]) == ("example-abc123", "example-abc123.ci.test")
    assert env["LETS_ENCRYPT_ENV"] == "staging" and env["CCCI_SSO_REALM"] == "example-abc123"
    env = stack_env(layout, spec(), {})
    assert "COMPOSE_FILE" not in env and env["LETS_ENCRYPT_ENV"] == "production"


def test_named_volume_mounts_are_read_from_both_syntaxes() -> None:
    service = {"volumes": ["data:/var/lib/x", "/srv:/srv", "./conf:/conf:ro", "/anonymous",
                           {"type": "volume", "source": "cache", "target": "/c"},
                           {"type": "bind", "source": "/etc", "target": "/e"}]}
    assert mounted_volumes(service) == {"data", "cache"}
    assert mounted_volumes({"image": "x"}) == set()


def test_warm_apps_are_pinned_to_the_controllers_node_cold_apps_only_where_it_must_reach_them(
        recipe: Path) -> None:
    layout = read_layout(recipe, {"STACK_NAME": "example-abc123", "DOMAIN": "d"})
    assert layout.stateful == ["db"]
    constraint = {"constraints": ["node.id==node-a"]}
    cold = DeploySpec(spec().identity, "d", "app", 80, 24000, node="node-a")
    doc = overlay_document(layout, cold)
    # The probed HTTP service and the one with a named volume; here that is every service.
    assert pinned_services(layout, cold) == ["app", "db"]
    assert doc["services"]["app"]["deploy"]["placement"] == constraint
    no_http = DeploySpec(spec().identity, "d", None, 80, None, node="node-a")
    assert pinned_services(layout, no_http) == ["db"]
    assert "placement" not in overlay_document(layout, no_http)["services"]["app"]["deploy"]
    warm_identity = AppIdentity("warm-example", "warm", None, "f" * 40, "owner1")
    warm = DeploySpec(warm_identity, "d", None, 80, None, node="node-a")
    assert pinned_services(layout, warm) == ["app", "db"]
    assert overlay_document(layout, warm)["services"]["app"]["deploy"]["placement"] == constraint
    # Outside a swarm (no node id) nothing is constrained.
    assert pinned_services(layout, DeploySpec(warm_identity, "d", None, 80, None)) == []


def test_overlay_speaks_the_recipes_compose_version(recipe: Path) -> None:
    (recipe / "compose.yml").write_text(COMPOSE.replace('version: "3.8"\n', ""))
    (recipe / ".env.sample").write_text("TYPE=x\n")
    layout = read_layout(recipe, {})
    assert "version" not in overlay_document(layout, spec())


def test_unknown_http_service_is_the_recipes_fault(recipe: Path) -> None:
    layout = read_layout(recipe, {})
    bad = DeploySpec(spec().identity, "d", "web", 80, 1)
    with pytest.raises(ValueError, match="'web' is not in the recipe"):
        overlay_document(layout, bad)


def test_compose_file_outside_the_recipe_is_refused(recipe: Path) -> None:
    (recipe / ".env.sample").write_text("COMPOSE_FILE=compose.yml:../../etc/passwd\n")
    with pytest.raises(BadInput, match="outside the recipe"):
        read_layout(recipe, {})


def test_convergence_verdicts() -> None:
    from controller.runtime.stack import AppState, ServiceState, TaskState, convergence_problem

    def task(state: str, desired: str = "running", commit: str = "c1", err: str = "",
             code: int | None = None) -> TaskState:
        return TaskState(id="t", state=state, desired=desired, error=err, commit=commit, exit_code=code, created="")

    def app(*tasks: TaskState, update: str | None = None) -> AppState:
        return AppState("a", [ServiceState("app", "a_app", 1, update, "", "c1", list(tasks))])

    assert convergence_problem(app(task("running")), expected_commit="c1", known_failures={}) == (None, None)
    fatal, _ = convergence_problem(app(*[task("failed", "shutdown", err="boom", code=1)] * 3, task("starting")),
                                   expected_commit=None, known_failures={})
    assert fatal and "restart loop" in fatal and "boom" in fatal
    # Killed as unhealthy, exited 0, restart policy on-failure: nothing will ever run again.
    fatal, _ = convergence_problem(app(task("complete", "shutdown", code=0)), expected_commit=None, known_failures={})
    assert fatal and "no task running or scheduled" in fatal
    _, waiting = convergence_problem(app(task("running", commit="c0")), expected_commit="c1", known_failures={})
    assert waiting and "still runs commit c0" in waiting
    fatal, _ = convergence_problem(app(task("running"), update="rollback_completed"), expected_commit=None,
                                   known_failures={})
    assert fatal and "rollback_completed" in fatal
    _, waiting = convergence_problem(app(task("starting")), expected_commit=None, known_failures={})
    assert waiting == "service app has 0/1 tasks running"
    # An update whose replicas all run the deployed commit is in swarm's monitor period only: the
    # run's stability window starts; one still starting its new task, or with no commit to tell
    # old from new, or rolling back, is waited out.
    assert convergence_problem(app(task("running"), update="updating"), expected_commit="c1",
                               known_failures={}) == (None, None)
    for tasks, expected in (((task("running", commit="c0"),), "c1"), ((task("starting"),), "c1"),
                            ((task("running"), task("starting")), "c1"), ((task("running"),), None)):
        _, waiting = convergence_problem(app(*tasks, update="updating"), expected_commit=expected,
                                         known_failures={})
        assert waiting == "service app is updating", (tasks, expected)
    _, waiting = convergence_problem(app(task("running"), update="rollback_started"), expected_commit="c1",
                                     known_failures={})
    assert waiting == "service app is updating"


def test_a_task_the_engine_failed_to_start_is_no_verdict_on_the_recipe() -> None:
    from controller.runtime.stack import (
        AppState,
        ServiceState,
        TaskState,
        convergence_problem,
        engine_fault,
        new_engine_faults,
    )

    busy = ("starting container failed: unable to remount dir as readonly: mount tmpfs:/var/lib/docker/"
            "containers/41ed/mounts/secrets, flags: 0x21, data: uid=0,gid=0: device or resource busy")
    assert engine_fault(busy)
    # The recipe's own faults stay the recipe's: a missing binary, a crash, a bad image.
    for own in ('starting container failed: exec: "nope": executable file not found in $PATH',
                "task: non-zero exit (1)", "No such image: ccci-test/nope:latest"):
        assert not engine_fault(own), own
    failed = TaskState(id="t-busy", state="failed", desired="shutdown", error=busy, commit="c1", exit_code=None,
                       created="")
    app = AppState("a", [ServiceState("app", "a_app", 1, "paused",
                                      "update paused due to failure or early termination of task t-busy", "c1",
                                      [failed])])
    assert [task.id for _, task in new_engine_faults(app, set())] == ["t-busy"]
    assert new_engine_faults(app, {"t-busy"}) == []
    # Not yet retried, the paused update is fatal; once the wait retried that task, it waits.
    fatal, _ = convergence_problem(app, expected_commit="c1", known_failures={})
    assert fatal and "update paused" in fatal
    assert convergence_problem(app, expected_commit="c1", known_failures={}, excused=frozenset({"t-busy"})) == (
        None, "service app is resuming its update after an engine fault")
    # Retried engine faults never add up to a restart loop.
    looping = AppState("a", [ServiceState("app", "a_app", 1, None, "", "c1", [
        dataclasses.replace(failed, id=f"t{i}") for i in range(3)] + [
        TaskState(id="t-new", state="starting", desired="running", error="", commit="c1", exit_code=None,
                  created="")])])
    fatal, _ = convergence_problem(looping, expected_commit="c1", known_failures={})
    assert fatal and "restart loop" in fatal
    assert convergence_problem(looping, expected_commit="c1", known_failures={},
                               excused=frozenset({"t0", "t1", "t2"})) == (None, "service app has 0/1 tasks running")
