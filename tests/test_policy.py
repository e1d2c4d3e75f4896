"""The host policy: what a PR head's stack may ask of the CI host, refused before anything is
deployed unless ccci.yaml grants it; resource limits on every service."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.runtime.policy import Ask, granted, stack_asks
from controller.runtime.spec import ResourceLimits, limits_document
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import SETTINGS_HEAD, RemoteRegistry, request_doc

APP = "static-abc123"
STATIC = (Path(__file__).resolve().parent.parent / "testbed" / "recipes" / "static" / "1" / "compose.yml").read_text()
SERVICE = "    image: ccci-test/busybox:latest\n"


def with_volume(entry: str, extra: str = "") -> str:
    """The static recipe's compose file with one more volume (and `extra` lines) on its service."""
    text = STATIC.replace("      - data:/data\n", f"      - data:/data\n      - {entry}\n", 1)
    return text.replace(SERVICE, SERVICE + extra, 1)


def with_service(extra: str, tail: str = "") -> str:
    """The static recipe's compose file with `extra` lines added to its service (and `tail`
    appended at the top level)."""
    return STATIC.replace(SERVICE, SERVICE + extra, 1) + tail


# (name, files of the PR head, what the rejection must name). Hidden ones too: in an overlay
# picked by COMPOSE_FILE, behind a merge key, through an env substitution.
HOSTILE: list[tuple[str, dict[str, str], str]] = [
    ("docker socket", {"compose.yml": with_volume("/var/run/docker.sock:/var/run/docker.sock")}, "docker_socket"),
    ("bind mount of /", {"compose.yml": with_volume("/:/host")}, "bind:/"),
    ("long-syntax bind", {"compose.yml": with_volume("{type: bind, source: /etc, target: /etc-host}")}, "bind:/etc"),
    ("host network", {"compose.yml": with_service("    networks: [outside]\n",
                                                  "networks:\n  outside:\n    external: true\n    name: host\n")},
     "host_network"),
    ("cap_add", {"compose.yml": with_service("    cap_add: [SYS_ADMIN]\n")}, "cap_add:SYS_ADMIN"),
    ("seccomp unconfined", {"compose.yml": with_service("    security_opt: [seccomp=unconfined]\n")},
     "security_opt"),
    ("sysctls", {"compose.yml": with_service("    sysctls: {net.ipv4.ip_forward: 1}\n")}, "sysctls"),
    ("pid host", {"compose.yml": with_service("    pid: host\n")}, "pid_host"),
    ("ipc host", {"compose.yml": with_service("    ipc: host\n")}, "ipc_host"),
    ("privileged", {"compose.yml": with_service("    privileged: true\n")}, "privileged"),
    ("devices", {"compose.yml": with_service("    devices: [/dev/kmsg]\n")}, "devices"),
    ("a published port", {"compose.yml": with_service("    ports: ['2222:22']\n")}, "ports"),
    ("a volume driver reaching the host", {"compose.yml": STATIC.replace(
        "volumes:\n  data:\n",
        "volumes:\n  data:\n    driver: local\n    driver_opts: {type: none, o: bind, device: /etc}\n")},
     "volume_driver"),
    ("another app's external secret", {"compose.yml": with_service(
        "    secrets: [stolen]\n", "secrets:\n  stolen:\n    external: true\n    name: warm-notes_db_password_v1\n")},
     "external:secret:warm-notes_db_password_v1"),
    ("another app's network", {"compose.yml": with_service(
        "    networks: [theirs]\n", "networks:\n  theirs:\n    external: true\n    name: warm-notes_default\n")},
     "external:network:warm-notes_default"),
    ("hidden in an overlay", {"compose.yml": STATIC, "compose.root.yml":
        "version: \"3.8\"\nservices:\n  app:\n    volumes:\n      - /root:/stolen\n",
        ".env.sample": "TYPE=static\nCOMPOSE_FILE=compose.yml:compose.root.yml\n"}, "bind:/root"),
    ("hidden behind a merge key", {"compose.yml": STATIC.replace(
        "services:\n", "x-escape: &escape\n  pid: host\n  volumes: [/var/run/docker.sock:/sock]\n\nservices:\n")
        .replace(SERVICE, SERVICE + "    <<: *escape\n", 1)}, "pid_host"),
    ("through an env substitution", {"compose.yml": with_volume("${HOSTDIR}:/x"),
                                     ".env.sample": "TYPE=static\nHOSTDIR=/etc/ssl/private\n"},
     "bind:/etc/ssl/private"),
    ("combined", {"compose.yml": with_volume(
        "/var/run/docker.sock:/var/run/docker.sock", "    cap_add: [NET_ADMIN]\n    pid: host\n")},
     "docker_socket"),
]


def asks_of(text: str) -> set[str]:
    from ruamel.yaml import YAML
    return {ask.grant for ask in stack_asks(YAML(typ="safe", pure=True).load(text), app=APP)}


def test_every_fixture_recipe_asks_for_nothing() -> None:
    from controller.runtime.compose import read_layout, rendered_files
    for recipe in sorted((Path(__file__).resolve().parent.parent / "testbed" / "recipes").glob("*/*")):
        layout = read_layout(recipe, {"STACK_NAME": APP, "DOMAIN": "x.test"})
        files = rendered_files(recipe, layout, {**layout.env_sample, "STACK_NAME": APP, "DOMAIN": "x.test"})
        assert [a for doc in files.values() for a in stack_asks(doc, app=APP)] == [], recipe


def test_what_a_stack_asks_is_named_by_its_grant() -> None:
    assert asks_of(STATIC) == set()
    assert asks_of(with_volume("/run/docker.sock:/d.sock")) == {"docker_socket"}
    assert asks_of(with_service("    network_mode: host\n")) == {"host_network"}
    assert asks_of(with_service("    cap_add: [CAP_NET_ADMIN, sys_time]\n")) == {
        "cap_add:NET_ADMIN", "cap_add:SYS_TIME"}
    assert asks_of(with_service("    security_opt: ['no-new-privileges:true']\n")) == set()  # tightens
    assert asks_of(with_service("    networks: [proxy]\n", "networks:\n  proxy: {external: true}\n")) == set()
    own = "secrets:\n  own:\n    external: true\n    name: static-abc123_db_v1\n"
    assert asks_of(with_service("    secrets: [own]\n", own)) == set()  # the run's own


def test_a_bind_grant_covers_its_path_and_below_never_a_way_out() -> None:
    grant = ("bind:/srv/backups",)
    assert granted(Ask("bind:/srv/backups/db", "", ""), grant)
    assert granted(Ask("bind:/srv/backups", "", ""), grant)
    assert not granted(Ask("bind:/srv/backups-old", "", ""), grant)
    assert not granted(Ask("bind:/srv/backups/../../etc", "", ""), grant)
    assert not granted(Ask("docker_socket", "", ""), grant)
    assert granted(Ask("docker_socket", "", ""), ("docker_socket",))


def test_limits_speak_the_recipes_compose_version() -> None:
    limits = ResourceLimits("512M", 0.5, 256)
    assert limits_document(limits, "3.8") == {"memory": "512M", "cpus": "0.5"}  # the CLI refuses pids in 3.8
    assert limits_document(limits, "3.9") == {"memory": "512M", "cpus": "0.5", "pids": 256}
    assert limits_document(limits, None)["pids"] == 256


# -- on the real engine -------------------------------------------------------------------------

def policy_settings(recipe: Path, allow: str = "", memory: str = "") -> str:
    options = f", policy: {{allow: [{allow}]}}" if allow else ""
    options += f", limits: {{memory: {memory}}}" if memory else ""
    return SETTINGS_HEAD + f"recipes:\n  static: {{source: {recipe}, timeout_s: 60, stability_s: 1{options}}}\n"


def engine_names() -> set[str]:
    """Every service, network, volume, secret and config on the engine, by name."""
    import docker
    client = docker.from_env(timeout=60)
    try:
        return ({s.name for s in client.services.list()} | {n.name for n in client.networks.list()}
                | {v.name for v in client.volumes.list()} | {s.name for s in client.secrets.list()}
                | {c.name for c in client.configs.list()})
    finally:
        client.close()


@pytest.mark.docker
def test_hostile_stacks_are_rejected_with_nothing_deployed_and_serve_keeps_serving(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> None:
    recipe = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    heads = {name: recipe.commit_files(f"pr-{i}", files) for i, (name, files, _) in enumerate(HOSTILE)}
    good = recipe.versions[1]
    requests = {f"20261202T130000-static-{i:06x}": (name, ref) for i, (name, ref) in enumerate(heads.items())}
    requests["20261202T130001-static-00ffff"] = ("the fixture itself", good)
    git_remote.edit({"ccci.yaml": policy_settings(recipe.path),
                     **{f"requests/{run}.yaml": request_doc("static", ref=ref) for run, (_, ref) in requests.items()}})
    clone = git_remote.clone("controller")
    before = engine_names()
    proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once",
                        "--poll-interval", "0.3", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = helpers.results_in(clone)
    for run, (name, _) in requests.items():
        result = results[run]
        if name == "the fixture itself":
            assert result["outcome"] == "pass", result
            continue
        expected = next(grant for n, _, grant in HOSTILE if n == name)
        assert (result["outcome"], result["cause"]) == ("rejected", "policy"), (name, result)
        assert expected in result["error"] and "in recipes.static.policy.allow" in result["error"], \
            (name, result["error"])
        assert "Nothing was deployed" in result["error"]
        phases = [p["name"] for p in result["phases"]]
        assert phases[:2] == ["fetch", "policy"] and "deploy" not in phases, (name, phases)
        assert helpers.objects_of_app(f"static-{run[-6:]}") == [], name
    # Nothing of the hostile runs by name either (the good one came and went).
    assert {n for n in engine_names() - before if "static-" in n} == set()


@pytest.mark.docker
def test_a_granted_privilege_deploys_and_a_pr_adding_one_over_its_known_good_is_named(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> None:
    recipe = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    socket = docker_host.removeprefix("unix://")
    adds_socket = recipe.commit_files("pr-socket", {"compose.yml": with_volume(
        f"{socket}:/var/run/docker.sock:ro")})
    git_remote.edit({"ccci.yaml": policy_settings(recipe.path)})
    clone = git_remote.clone("controller")
    # Seed the canonical with the fixture (no privileges), then the PR that adds the socket.
    from tests.test_cold import run_request
    _, seeded = run_request(clone, state_dir, "static", recipe.versions[1])
    assert seeded["canonical"]["advanced"] is True
    _, refused = run_request(clone, state_dir, "static", adds_socket)
    assert (refused["outcome"], refused["cause"]) == ("rejected", "policy"), refused
    assert f"the PR head adds docker_socket over the known-good {recipe.versions[1][:12]}" in refused["error"]
    assert refused["policy"] == {"asks": ["docker_socket"], "added": ["docker_socket"], "granted": []}
    # The reviewers grant it: the same head deploys, and the result still says what it adds.
    git_remote.edit({"ccci.yaml": policy_settings(recipe.path, allow="docker_socket")})
    helpers.git(clone, "pull", "-q", "--rebase")
    _, allowed = run_request(clone, state_dir, "static", adds_socket)
    assert allowed["outcome"] == "pass", allowed
    assert allowed["policy"] == {"asks": ["docker_socket"], "added": ["docker_socket"], "granted": ["docker_socket"]}


@pytest.mark.docker
def test_a_service_over_its_memory_limit_is_stopped_and_the_run_fails_with_cause_limit(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> None:
    recipe: RecipeRepo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    # A service that wants 200 MB under a 32 MB limit: the kernel kills it, swarm restarts it.
    hungry = recipe.commit_files("pr-hungry", {"compose.yml": STATIC.replace(
        '["sh", "-c", "date >> /data/starts.log && exec httpd -f -v -p 80 -h /www"]',
        # PID 1 itself holds 200 MB ($$ is compose's escape of $; tr turns the NULs into text).
        '["sh", "-c", "x=$$(head -c 200000000 /dev/zero | tr \'\\\\0\' a); exec httpd -f -p 80 -h /www"]')})
    git_remote.edit({"ccci.yaml": policy_settings(recipe.path, memory="32M")})
    clone = git_remote.clone("controller")
    from tests.test_cold import run_request
    run_id, result = run_request(clone, state_dir, "static", hungry)
    assert (result["outcome"], result["cause"]) == ("fail", "limit"), result
    assert "killed by its memory limit (32M; recipes.static.limits.memory" in result["error"]
    assert helpers.objects_of_app(f"static-{run_id[-6:]}") == []
    leaks = helpers.ccci("--state-dir", str(state_dir), "leaks")
    assert leaks.returncode == 0, leaks.stdout + leaks.stderr
