"""Tried as an operator would: the controller's clone, broken settings, disk pressure, early
validation, exit codes, and the loops only `serve` runs."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from controller.flows import keycloak
from controller.flows.context import Context
from controller.registry.results import RunResult
from controller.registry.store import Registry
from controller.util import names
from controller.util.paths import StateDir
from controller.util.timeutil import new_run_id, now_iso
from tests import helpers
from tests.helpers import HEX_A, SETTINGS_HEAD, RemoteRegistry, request_doc, wait_for

STAMP = "20261202T120000"


def remote_results(remote: RemoteRegistry) -> set[str]:
    """Run ids with a result on the remote (a clone in use is left alone)."""
    listed = helpers.git(remote.bare, "ls-tree", "-r", "--name-only", "main", "results/").split()
    return {Path(name).stem for name in listed}


def remote_settings(remote: RemoteRegistry) -> str:
    return helpers.git(remote.bare, "show", "main:ccci.yaml") + "\n"


def alerts(state: Path) -> dict[str, str]:
    return {json.loads(p.read_text())["key"]: json.loads(p.read_text())["message"]
            for p in sorted((state / "alerts").glob("*.json"))}


@pytest.fixture
def static_remote(git_remote: RemoteRegistry, tmp_path: Path) -> RemoteRegistry:
    from testbed.fixtures import build_recipe
    recipe = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    git_remote.set_recipes(f"  static: {{source: {recipe.path}}}\n")
    return git_remote


# -- the controller's clone ---------------------------------------------------------------------

def test_a_persons_uncommitted_edit_survives_a_diverged_clone_and_is_named(
        static_remote: RemoteRegistry, state_dir: Path) -> None:
    clone = static_remote.clone("controller")
    # The clone has a commit the remote does not (a request filed while the remote was away)...
    (clone / "requests" / f"{STAMP}-static-00000a.yaml").write_text(request_doc("static"))
    helpers.git(clone, "add", "-A")
    helpers.git(clone, "commit", "-qm", "filed offline")
    # ...the remote moved on, and someone is editing ccci.yaml in the clone.
    static_remote.edit({f"requests/{STAMP}-static-00000b.yaml": request_doc("static")})
    edited = (clone / "ccci.yaml").read_text() + "# tuning the sweep, not finished yet\n"
    (clone / "ccci.yaml").write_text(edited)
    proc = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(clone), "--recipe",
                        "static", "--ref", HEX_A, "--by", "alice")
    assert proc.returncode == 2, proc.stderr
    assert "uncommitted changes to ccci.yaml and the remote moved" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (clone / "ccci.yaml").read_text() == edited  # never discarded
    served = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once")
    assert served.returncode == 2 and "uncommitted changes to ccci.yaml" in served.stderr
    assert (clone / "ccci.yaml").read_text() == edited
    assert "clone-dirty" in alerts(state_dir)


def test_serve_once_with_a_broken_settings_file_from_the_remote_says_why_and_exits(
        static_remote: RemoteRegistry, state_dir: Path) -> None:
    clone = static_remote.clone("controller")  # a good ccci.yaml here...
    static_remote.edit({"ccci.yaml": "base_domain: [broken\n"})  # ...a broken one on the remote
    proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "ccci.yaml: malformed YAML" in proc.stderr


def test_serve_holds_on_a_broken_settings_file_and_takes_the_fix_from_the_remote(
        static_remote: RemoteRegistry, state_dir: Path) -> None:
    good = remote_settings(static_remote)
    static_remote.edit({"ccci.yaml": "base_domain: [broken\n",
                        f"requests/{STAMP}-static-0000c1.yaml": request_doc("static", ref="e" * 40)})
    clone = static_remote.clone("controller")  # broken from the start: no good copy anywhere
    serve = helpers.ServeProcess(clone, state_dir, "--poll-interval", "0.3")
    try:
        wait_for(lambda: "settings" in alerts(state_dir), 60, "the settings alert")
        assert serve.proc.poll() is None, "serve exited instead of holding: " + serve.log()
        static_remote.edit({"ccci.yaml": good})  # the fix, pushed to the remote
        wait_for(lambda: f"{STAMP}-static-0000c1" in remote_results(static_remote), 60,
                 "the held request answered after the fix")
        assert "settings" not in alerts(state_dir)
    finally:
        assert serve.stop() == 0, serve.log()


def test_commands_fetch_before_they_read_the_settings(static_remote: RemoteRegistry, state_dir: Path) -> None:
    good = remote_settings(static_remote)
    static_remote.edit({"ccci.yaml": "base_domain: [broken\n"})
    clone = static_remote.clone("controller")
    static_remote.edit({"ccci.yaml": good + "# fixed\n"})
    proc = helpers.ccci("--state-dir", str(state_dir), "sweep", "--registry", str(clone), "--now")
    assert proc.returncode == 0, proc.stderr


# -- disk pressure ------------------------------------------------------------------------------

def test_below_the_free_disk_limit_nothing_new_is_claimed_and_status_says_so(
        static_remote: RemoteRegistry, state_dir: Path) -> None:
    static_remote.edit({"ccci.yaml": remote_settings(static_remote)
                        .replace("disk_min_free_gb: 0", "disk_min_free_gb: 1000000"),
                        f"requests/{STAMP}-static-0000d1.yaml": request_doc("static", ref="e" * 40)})
    clone = static_remote.clone("controller")
    proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once", timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "1 requests wait, and serve --once cannot wait for room: disk low" in proc.stderr
    assert helpers.results_in(clone) == {}  # not claimed
    assert "claiming nothing new until there is room" in alerts(state_dir)["claims-held"]
    table = helpers.ccci("--state-dir", str(state_dir), "status", "--registry", str(clone), check=True).stdout
    assert "claims-held" in table


# -- early validation ---------------------------------------------------------------------------

def test_bad_input_is_refused_where_it_is_typed(static_remote: RemoteRegistry, state_dir: Path,
                                                tmp_path: Path) -> None:
    clone = static_remote.clone("controller")
    unknown = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(clone), "--recipe",
                           "nothere", "--ref", HEX_A, "--by", "alice")
    assert unknown.returncode == 2 and "--recipe: 'nothere' is not configured under 'recipes'" in unknown.stderr
    assert not list((clone / "requests").glob("*nothere*"))
    domain = helpers.ccci("init", str(tmp_path / "new"), "--base-domain", "bad domain!")
    assert domain.returncode == 2 and "--base-domain: 'bad domain!' is not a domain name" in domain.stderr
    assert not (tmp_path / "new").exists()
    static_remote.edit({"ccci.yaml": SETTINGS_HEAD.replace("sweep: {max_tests: 0}",
                                                           "sweep: {max_tests: 0, timezone: Mars/Olympus}")})
    zone = helpers.ccci("--state-dir", str(state_dir), "sweep", "--registry", str(clone), "--now")
    assert zone.returncode == 2 and "at 'sweep.timezone': 'Mars/Olympus' is not a known time zone" in zone.stderr
    for args in (("serve", "--registry", str(clone), "--poll-interval", "-5"),
                 ("forge", "poll", "--registry", str(clone), "--interval", "0")):
        proc = helpers.ccci("--state-dir", str(state_dir), *args)
        assert proc.returncode == 2 and "positive number of seconds" in proc.stderr, proc.stderr


def test_a_recipe_source_that_does_not_exist_is_named_at_start_and_in_status(
        git_remote: RemoteRegistry, state_dir: Path, tmp_path: Path) -> None:
    git_remote.set_recipes(f"  gone: {{source: {tmp_path / 'no-such-recipe'}}}\n")
    clone = git_remote.clone("controller")
    proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once")
    assert proc.returncode == 0, proc.stderr
    assert "recipes.gone.source" in alerts(state_dir)["recipe-source-gone"]
    status = json.loads(helpers.ccci("--state-dir", str(state_dir), "status", "--registry", str(clone),
                                     "--json", check=True).stdout)
    row = next(r for r in status["recipes"] if r["recipe"] == "gone")
    assert "does not exist" in row["source_problem"]


# -- exit codes ---------------------------------------------------------------------------------

def test_exit_codes_say_what_happened(static_remote: RemoteRegistry, state_dir: Path, tmp_path: Path) -> None:
    clone = static_remote.clone("controller")
    level = helpers.ccci("--log-level", "CHATTY", "status", "--registry", str(clone))
    assert level.returncode == 2 and "'CHATTY' is not one of DEBUG" in level.stderr and "Traceback" not in level.stderr

    def trigger(comment: str) -> subprocess.CompletedProcess[str]:
        return helpers.ccci("--state-dir", str(state_dir), "trigger", "--registry", str(clone), "--recipe",
                            "static", "--ref", HEX_A, "--by", "alice", "--comment", comment)

    chatter = trigger("thanks, looks good")
    assert chatter.returncode == 0 and chatter.stdout.startswith("ignored: not a trigger")
    typo = trigger("!testme --quik")
    assert typo.returncode == 2 and "is not a ccci trigger" in typo.stderr
    leaks = helpers.ccci("--state-dir", str(state_dir), "leaks",
                         env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert leaks.returncode == 2 and "cannot look for leaks: cannot reach the Docker engine" in leaks.stderr


# -- on the real engine -------------------------------------------------------------------------

@pytest.mark.docker
def test_no_snapshot_or_restore_while_any_container_uses_the_apps_volumes(
        docker_host: str, state_dir: Path) -> None:
    import docker

    client = docker.from_env(timeout=60)
    app = f"warm-writer{new_run_id('x')[-6:]}"
    volume = client.volumes.create(f"{app}_data", labels={"com.docker.stack.namespace": app})
    # A plain container, no ccci labels at all, writing to the app's volume.
    writer = client.containers.run("ccci-test/busybox:latest", ["sleep", "300"], detach=True,
                                   volumes={volume.name: {"bind": "/data", "mode": "rw"}})
    try:
        take = helpers.ccci("--state-dir", str(state_dir), "snapshot", "take", app, "--commit", HEX_A)
        assert take.returncode == 1, take.stderr
        assert f"cannot snapshot {app} while a container uses its volumes" in take.stderr
        assert writer.name in take.stderr
        writer.pause()
        restore = helpers.ccci("--state-dir", str(state_dir), "snapshot", "restore", app)
        assert restore.returncode == 1 and "paused" in restore.stderr, restore.stderr
        writer.unpause()
        writer.kill(signal.SIGKILL)
        writer.remove(force=True)
        take = helpers.ccci("--state-dir", str(state_dir), "snapshot", "take", app, "--commit", HEX_A)
        assert take.returncode == 0, take.stderr  # no writer left: it goes
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            writer.remove(force=True)
        volume.remove(force=True)
        client.close()


@pytest.mark.docker
@pytest.mark.keycloak
def test_serve_reaps_a_realm_leaked_while_it_runs(git_remote: RemoteRegistry, state_dir: Path,
                                                  keycloak_admin: dict[str, str]) -> None:
    kc = (f"{{mode: external, url: '{keycloak_admin['url']}', "
          f"admin_secret_file: '{keycloak_admin['secret_file']}'}}")
    git_remote.edit({"ccci.yaml": SETTINGS_HEAD + f"warm: {{keycloak: {kc}}}\nserve: {{reap_interval_s: 10}}\n"
                     + "recipes:\n  iso: {source: /nonexistent, sso: keycloak}\n"})
    clone = git_remote.clone("controller")
    serve = helpers.ServeProcess(clone, state_dir, "--poll-interval", "0.5")
    try:
        wait_for(lambda: (state_dir / "serve" / "jobs.json").exists(), 60, "serve's first jobs")
        # A run that died after making its realm, while serve was already running.
        ctx = Context.open(Registry(git_remote.clone("other")), StateDir(state_dir))
        dead = new_run_id("iso")
        result = RunResult(run=dead, recipe="iso", ref=None, mode="cold", requested_mode="cold",
                           outcome="running", started_at=now_iso())
        grant = keycloak.prepare_realm(ctx, result, "iso", dead, names.cold_app("iso", dead))
        client = keycloak.warm_endpoint(ctx)[0]
        assert client is not None

        def reaped() -> bool:
            return grant.realm not in {r.name for r in client.client().realms()}

        wait_for(reaped, 90, f"serve to reap realm {grant.realm}")
        # serve did it (its log says so), not a start-up: the realm was made after serve started.
        wait_for(lambda: f"reaped realm {grant.realm}" in serve.log(), 30, "the reaper's log line")
    finally:
        assert serve.stop() == 0, serve.log()

