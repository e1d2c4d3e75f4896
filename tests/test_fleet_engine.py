"""The fleet on the real engine: a registry written by the last single-host ccci keeps working
after the upgrade (its snapshot index moves under its owner's name), a second host joins it and
leaves the quick runs to the host holding the snapshot, and a host SIGKILLed mid-run is marked
`aborted` by the other after the claim's deadline.

Both hosts are controllers with their own `--host`, clone and state dir on the one test-bed
engine (the host and the engine are independent settings); the two-engine test is separate."""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from controller.runtime import stack
from controller.util import names
from controller.util.yamlio import load_untrusted
from testbed.fixtures import build_recipe
from tests import helpers
from tests.helpers import REPO_ROOT, STATIC_OPTIONS, RemoteRegistry, recipe_entry, wait_for

pytestmark = pytest.mark.docker

# The last commit of the single-host ccci (before the fleet): its code writes the old registry.
SINGLE_HOST_CCCI = "d95a6e3c1670cf3c58855e4b3c4341668b0dc562"


def single_host_ccci(dest: Path) -> Path:
    """That ccci's `controller/` package, from this repository's history."""
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", SINGLE_HOST_CCCI, "controller"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.fail(f"commit {SINGLE_HOST_CCCI} is not in this clone's history: {archive.stderr.decode()}")
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def remote_results(remote: RemoteRegistry) -> dict[str, dict[str, Any]]:
    out = {}
    listed = helpers.git(remote.bare, "ls-tree", "-r", "--name-only", "main", "results/").splitlines()
    for rel in listed:
        if rel.endswith(".yaml") and rel.count("/") == 2:
            text = helpers.git(remote.bare, "show", f"main:{rel}")
            out[Path(rel).stem] = load_untrusted(text.encode(), rel, max_bytes=1 << 20)
    return out


def remote_files(remote: RemoteRegistry, under: str) -> list[str]:
    listed = helpers.git(remote.bare, "ls-tree", "-r", "--name-only", "main", under).splitlines()
    return [rel for rel in listed if not rel.endswith(".gitkeep")]


def test_a_single_host_registry_upgrades_then_a_second_host_joins_and_outlives_a_killed_one(
        git_remote: RemoteRegistry, tmp_path: Path, docker_host: str) -> None:
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1, 2])
    unmerged = repo.branch_commit("pr", 2)
    recipe, doomed = f"fleet-{secrets.token_hex(3)}", f"fleet-{secrets.token_hex(3)}"
    app = names.warm_app(recipe)
    recipes = (recipe_entry(recipe, repo.path, **STATIC_OPTIONS)
               + recipe_entry(doomed, repo.path, timeout_s=20, stability_s=1))
    git_remote.set_recipes(recipes)
    clone_a, clone_b = git_remote.clone("alpha"), git_remote.clone("beta")
    state_a, state_b = tmp_path / "state-alpha", tmp_path / "state-beta"
    old = single_host_ccci(tmp_path / "single-host")

    def old_ccci(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "CCCI_HOST"}
        return subprocess.run([sys.executable, "-m", "controller", "--state-dir", str(state_a), *args],
                              cwd=old, env=env, capture_output=True, text=True, timeout=600, check=False)

    def on(host: str, *args: str) -> subprocess.CompletedProcess[str]:
        state, clone = (state_a, clone_a) if host == "alpha" else (state_b, clone_b)
        return helpers.ccci("--host", host, "--state-dir", str(state), *args, "--registry", str(clone))

    def request(host: str, name: str, ref: str, mode: str) -> str:
        proc = on(host, "request", "--recipe", name, "--ref", ref, "--mode", mode, "--by", "alice")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    serve_a: helpers.ServeProcess | None = None
    try:
        # 1. Today's single-host ccci: a green cold seeds the canonical, its rewarm the index.
        seeded = old_ccci("request", "--registry", str(clone_a), "--recipe", recipe, "--ref",
                          repo.versions[1], "--mode", "cold", "--by", "alice")
        assert seeded.returncode == 0, seeded.stderr
        ran = old_ccci("run", "--registry", str(clone_a), seeded.stdout.strip())
        assert ran.returncode == 0, ran.stdout + ran.stderr
        legacy = names.legacy_snapshot_index_rel(app)
        assert legacy in remote_files(git_remote, "snapshots-index/")
        old_result = remote_results(git_remote)[seeded.stdout.strip()]
        assert "host" not in old_result and old_result["controller"].startswith(os.uname().nodename)

        # 2. The upgrade. The doomed recipe's runs get a short deadline: its timeout_s 20 and
        # no grace (a key the single-host ccci did not know). Alpha's first start moves the
        # entry under its name, in one commit.
        git_remote.set_recipes(recipes, extra="serve: {deadline_grace_s: 0}\n")
        first = on("alpha", "serve", "--once")
        assert first.returncode == 0, first.stderr
        assert remote_files(git_remote, "snapshots-index/") == [names.snapshot_index_rel("alpha", app)]
        subjects = helpers.git(git_remote.bare, "log", "--format=%s", "main").splitlines()
        assert sum(1 for s in subjects if s.startswith("[migrate]")) == 1

        # 3. Beta joins: it leaves the quick run to alpha, which holds the snapshot; a cold one
        # it runs itself. (A PR head off main: green, never promoted, so no rewarm on beta.)
        quick_id = request("beta", recipe, repo.versions[2], "quick")
        cold_id = request("beta", recipe, unmerged, "cold")
        assert on("beta", "serve", "--once").returncode == 0
        results = remote_results(git_remote)
        assert quick_id not in results, results.get(quick_id)
        assert (results[cold_id]["host"], results[cold_id]["outcome"]) == ("beta", "pass"), results[cold_id]
        assert on("alpha", "serve", "--once").returncode == 0
        quick = remote_results(git_remote)[quick_id]
        assert (quick["host"], quick["mode"], quick["outcome"]) == ("alpha", "quick", "pass"), quick

        # 4. Alpha is SIGKILLed mid-run and never comes back; beta marks the run aborted once
        # its deadline has passed, and nothing else.
        serve_a = helpers.ServeProcess(clone_a, state_a, "--poll-interval", "0.5",
                                       env={"CCCI_HOST": "alpha"}, log_path=tmp_path / "alpha.log")
        doomed_id = request("alpha", doomed, repo.versions[1], "cold")
        wait_for(lambda: remote_results(git_remote).get(doomed_id, {}).get("outcome") == "running", 120,
                 "alpha to claim the doomed run")
        wait_for(lambda: helpers.objects_of_app(names.cold_app(doomed, doomed_id)), 120,
                 "alpha's run to deploy its app")
        serve_a.proc.send_signal(signal.SIGKILL)
        serve_a.proc.wait(30)
        serve_b = helpers.ServeProcess(clone_b, state_b, "--poll-interval", "0.5",
                                       env={"CCCI_HOST": "beta"}, log_path=tmp_path / "beta.log")
        try:
            aborted = wait_for(lambda: (r := remote_results(git_remote).get(doomed_id)) and
                               r["outcome"] == "aborted" and r, 180, "beta to mark alpha's run aborted")
        finally:
            assert serve_b.stop() == 0, serve_b.log()[-3000:]
        assert aborted["host"] == "alpha" and aborted["controller"].startswith("beta:"), aborted
        assert aborted["finished_at"] >= aborted["deadline"], aborted
        assert "host alpha did not finish this run by its deadline" in aborted["error"]
        finals = [s for s in helpers.git(git_remote.bare, "log", "--format=%s", "main").splitlines()
                  if f"(run {doomed_id})" in s and " aborted " in s]
        assert len(finals) == 1, finals
        # Beta never touched alpha's objects: alpha's cold app is still there, for alpha to undo.
        doomed_app = names.cold_app(doomed, doomed_id)
        assert helpers.objects_of_app(doomed_app), "beta tore down an app of alpha's"
        # The registry upgraded from the single-host ccci reads fine: status shows both hosts.
        shown = on("beta", "status", "--json")
        assert shown.returncode == 0 and '"host": "alpha"' in shown.stdout, shown.stderr
    finally:
        if serve_a is not None and serve_a.proc.poll() is None:
            serve_a.proc.kill()
        # Alpha comes back (as an operator would, later): its start-up tears its leftovers down.
        helpers.ccci("--host", "alpha", "--state-dir", str(state_a), "serve", "--once", "--registry", str(clone_a))
        stack.undeploy(app, remove_volumes=True)  # warm data outlives runs by design
    assert helpers.objects_of_app(names.cold_app(doomed, doomed_id)) == []
