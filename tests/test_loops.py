"""Loops on the real swarm that no other test drives end to end: the sweep and the rewarm inside
a running `ccci serve`, a rewarm that fails, SIGKILLs mid-snapshot and mid-upgrade with the
restart after them, and a quick upgrade the swarm refuses to deploy."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from controller import snapshots
from controller.flows import jobs
from controller.flows.keycloak.reconcile import running_commit
from controller.runtime import probe, stack
from controller.util import names
from controller.util.paths import StateDir
from controller.util.timeutil import utcnow
from controller.util.yamlio import load_untrusted
from testbed.fixtures import RECIPES, RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import SETTINGS_HEAD, STATIC_OPTIONS, RemoteRegistry, recipe_entry, wait_for
from tests.test_sso import KEYCLOAK_OPTIONS

pytestmark = pytest.mark.docker


@dataclass
class Bed:
    """One static recipe under a name of its own (the test bed is shared), its registry on a
    bare remote, a controller clone and a state dir."""

    remote: RemoteRegistry
    clone: Path
    state: Path
    recipe: str
    repo: RecipeRepo

    @property
    def app(self) -> str:
        return names.warm_app(self.recipe)

    @property
    def index_rel(self) -> str:
        return names.snapshot_index_rel(helpers.HOST, self.app)

    def ccci(self, *args: str) -> subprocess.CompletedProcess[str]:
        return helpers.ccci("--state-dir", str(self.state), *args)

    def request(self, ref: str, mode: str = "cold") -> str:
        return self.ccci("request", "--registry", str(self.clone), "--recipe", self.recipe, "--ref", ref,
                         "--mode", mode, "--by", "alice").stdout.strip()

    def run(self, run_id: str, *extra: str) -> dict[str, Any]:
        """`ccci run` (which also performs the rewarm a promotion queues, unless --no-rewarm)."""
        proc = self.ccci("run", "--registry", str(self.clone), run_id, *extra)
        results = helpers.results_in(self.clone)
        assert run_id in results, proc.stdout + proc.stderr
        return results[run_id]

    def remote_text(self, rel: str, *, as_filed: bool = False) -> str | None:
        """A file as the bare remote (the truth every controller reads) has it on main; `as_filed`:
        as the commit that added it had it (a request is gone once its verdict is in)."""
        at = "main"
        if as_filed:
            at = subprocess.run(["git", "log", "-1", "--format=%H", "--diff-filter=A", "main", "--", rel],
                                cwd=self.remote.bare, capture_output=True, text=True, check=False).stdout.strip()
        proc = subprocess.run(["git", "show", f"{at}:{rel}"], cwd=self.remote.bare, capture_output=True,
                              text=True, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def remote_results(self) -> dict[str, dict[str, Any]]:
        listed = helpers.git(self.remote.bare, "ls-tree", "-r", "--name-only", "main", "results/")
        out = {}
        for rel in listed.splitlines():
            if rel.count("/") != 2 or not rel.endswith(".yaml"):
                continue  # results/<month>/<run>.yaml; not .gitkeep
            text = self.remote_text(rel)
            if text is not None:
                out[Path(rel).stem] = load_untrusted(text.encode(), rel, max_bytes=1 << 20)
        return out

    def remote_subjects(self) -> list[str]:
        return helpers.git(self.remote.bare, "log", "--format=%s", "main").splitlines()

    def index_history(self) -> list[str]:
        return helpers.git(self.remote.bare, "log", "--format=%H", "main", "--", self.index_rel).splitlines()

    def snapshot(self) -> snapshots.SnapshotInfo:
        info = snapshots.current_snapshot(self.state / "snapshots", self.app)
        assert info is not None, f"{self.app} has no last-known-good"
        return info

    def generation(self) -> str:
        return os.readlink(self.state / "snapshots" / self.app / "last-known-good")

    def live_volumes(self) -> str:
        """What `ccci snapshot verify --paranoid` says of the live volumes against the snapshot."""
        proc = self.ccci("snapshot", "verify", self.app, "--paranoid")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        line = next((ln for ln in proc.stdout.splitlines() if ": live volumes " in ln), "")
        return line.split(": live volumes ", 1)[-1]

    def leaks(self) -> subprocess.CompletedProcess[str]:
        return self.ccci("leaks")

    def queued_rewarms(self) -> list[str]:
        queue = self.state / "queue"
        return sorted(p.name for p in queue.iterdir()) if queue.is_dir() else []

    def seed(self) -> dict[str, Any]:
        """A green cold run of main's head seeds the canonical; its rewarm the snapshot. Returns
        the rewarm's result."""
        cold = self.run(self.request(self.repo.head()))
        assert cold["outcome"] == "pass" and cold["canonical"]["advanced"], cold
        rewarms = [r for r in helpers.results_in(self.clone).values() if r["mode"] == "rewarm"]
        assert [r["outcome"] for r in rewarms] == ["pass"], rewarms
        return rewarms[0]


@pytest.fixture
def bed(git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> Iterator[Bed]:
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    recipe = f"loop-{secrets.token_hex(3)}"
    git_remote.set_recipes(recipe_entry(recipe, repo.path, **STATIC_OPTIONS))
    made = Bed(git_remote, git_remote.clone("controller"), state_dir, recipe, repo)
    try:
        yield made
    finally:
        stack.undeploy(made.app, remove_volumes=True)  # warm data outlives runs by design


def phases(result: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["status"] for p in result["phases"]}


# -- 1 and 2: the sweep and the rewarm inside a running serve ------------------------------------

def test_serve_sweeps_at_its_hour_after_reconciling_the_live_keycloak_and_rewarms_what_the_sweep_promoted(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> None:
    """The sweep job due at `sweep.at` runs inside `ccci serve`: it first reconciles the managed
    Keycloak (deployed here for the first time), then files a `[sweep]` cold request, which serve
    runs; the green run on main promotes, so serve queues and performs the rewarm."""
    static = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    keycloak = build_recipe("keycloak", tmp_path / "recipes" / "keycloak", versions=[1])
    hexa = secrets.token_hex(3)
    recipe, kc_recipe, kc_app = f"loop-{hexa}", f"sso-{hexa}", f"infra-kc-loop-{hexa}"
    secret_file = tmp_path / "kc-admin"
    secret_file.write_text(secrets.token_urlsafe(18))
    secret_file.chmod(0o600)
    now = utcnow()
    # Due because the slot a minute ago is after the last sweep three minutes ago (not because
    # a day has passed, nor because the ledger is empty).
    at = (now - dt.timedelta(minutes=1)).strftime("%H:%M")
    jobs.Ledger(StateDir(state_dir)).record("sweep", now - dt.timedelta(minutes=3), {"filed": []})
    # One recipe a sweep, alphabetical: the static recipe is swept; the Keycloak recipe is here
    # for the reconcile, and its own cold run would only cost time.
    sweep = f"sweep: {{at: '{at}', timezone: UTC, max_tests: 1, order: alphabetical}}"
    git_remote.edit({"ccci.yaml": SETTINGS_HEAD.replace("sweep: {max_tests: 0}", sweep)
                     + f"warm:\n  keycloak: {{mode: managed, recipe: {kc_recipe}, app: {kc_app}, "
                       f"port: {probe.free_port()}, admin_secret_file: '{secret_file}'}}\n"
                     + "recipes:\n" + recipe_entry(recipe, static.path, **STATIC_OPTIONS)
                     + recipe_entry(kc_recipe, keycloak.path, **KEYCLOAK_OPTIONS)}, "settings")
    made = Bed(git_remote, git_remote.clone("controller"), state_dir, recipe, static)
    v1 = static.versions[1]
    ledger = jobs.Ledger(StateDir(state_dir))
    serve = helpers.ServeProcess(made.clone, state_dir, "--poll-interval", "0.5")
    try:
        swept = wait_for(lambda: (ledger.entry("sweep") or {}).get("summary", {}).get("filed"), 420,
                         "the sweep job to file its requests")
        assert len(swept) == 1, ledger.entry("sweep")
        run_id = swept[0]
        rewarm = wait_for(lambda: next((r for r in made.remote_results().values()
                                        if r["mode"] == "rewarm" and r["outcome"] != "running"), None),
                          240, "serve to run the sweep's request and the rewarm it queues")
        wait_for(lambda: not made.queued_rewarms(), 30, "the rewarm queue to empty")
        assert serve.stop() == 0, serve.log()[-3000:]

        # The ledger records tonight's sweep.
        entry = ledger.entry("sweep")
        last = ledger.last_run("sweep")
        assert entry and last and last >= now and entry["summary"]["skipped"] == {}, entry
        # The live Keycloak was reconciled (its first deploy) before the sweep filed anything.
        assert running_commit(kc_app) == keycloak.versions[1]
        infra = json.loads((state_dir / "infra" / f"{kc_app}.json").read_text())
        assert infra["commit"] == keycloak.versions[1], infra
        log = (state_dir / "logs" / "ccci.log").read_text()
        assert log.index(f"reconcile of {kc_app}: deployed") < log.index("sweep filed 1 requests"), log[-3000:]
        request = load_untrusted((made.remote_text(f"requests/{run_id}.yaml", as_filed=True) or "").encode(), run_id)
        assert (request["recipe"], request["ref"], request["mode"], request["requested_by"]) == (
            recipe, v1, "cold", "sweep")
        # Serve ran it; green on main, it seeded the canonical, and serve rewarmed.
        cold = made.remote_results()[run_id]
        assert cold["outcome"] == "pass" and cold["canonical"]["advanced"], cold
        assert rewarm["outcome"] == "pass" and rewarm["ref"] == v1, rewarm
        index = load_untrusted((made.remote_text(made.index_rel) or "").encode(), made.index_rel)
        assert (index["commit"], index["taken_by_run"]) == (v1, rewarm["run"]), index
        assert index["manifest_sha256"] == made.snapshot().manifest_sha256
        subjects = made.remote_subjects()
        assert subjects[0].startswith(f"[rewarm] {recipe}@{v1[:7]} pass") and "snapshot replaced" in subjects[0]
        assert f"[cold] {recipe}@{v1[:7]} pass (run {run_id}); canonical advanced" in subjects, subjects
        assert any(s.startswith("[sweep] 1 cold requests by ") and f"{recipe}@{v1[:7]}" in s
                   for s in subjects), subjects
        assert made.queued_rewarms() == []
        assert made.leaks().returncode == 0  # the live Keycloak is infra, the warm volume data
    finally:
        serve.stop()
        stack.undeploy(kc_app, remove_volumes=True)
        stack.undeploy(made.app, remove_volumes=True)


# -- 3: a rewarm that fails ---------------------------------------------------------------------

@pytest.fixture
def own_image(docker_host: str) -> Iterator[str]:
    """The test bed's busybox under a tag of this test's own, which it may remove (`ccci-test/*`
    is what the test bed's prunes keep)."""
    client = docker.from_env(timeout=30)
    ref = f"ccci-test/loop-{secrets.token_hex(3)}:1"
    repository, tag = ref.rsplit(":", 1)
    client.images.get("ccci-test/busybox:latest").tag(repository, tag)
    try:
        yield ref
    finally:
        if any(ref in image.tags for image in client.images.list(name=repository)):
            client.images.remove(ref)
        client.close()


def test_a_rewarm_that_fails_keeps_the_old_snapshot_and_the_old_index(bed: Bed, own_image: str) -> None:
    """The known-good's image is gone from the host (pruned, or deleted upstream): its rewarm
    cannot converge, says fail, and the last-known-good and `snapshots-index/` stay as they were."""
    compose = bed.repo.read(bed.repo.head(), "compose.yml")
    known_good = bed.repo.commit_files("main", {
        "compose.yml": compose.replace("ccci-test/busybox:latest", own_image)}, message="own image")
    first = bed.seed()
    assert first["ref"] == known_good
    before = bed.snapshot()
    generation, index_text, history = bed.generation(), bed.remote_text(bed.index_rel), bed.index_history()

    client = docker.from_env(timeout=30)
    client.images.remove(own_image)  # only the tag: busybox keeps its own
    client.close()
    proc = bed.ccci("canonical", "rewarm", bed.recipe, "--registry", str(bed.clone))

    assert proc.returncode == 1, proc.stdout + proc.stderr
    rewarms = [r for r in helpers.results_in(bed.clone).values() if r["mode"] == "rewarm"]
    failed = next(r for r in rewarms if r["run"] != first["run"])
    assert (failed["outcome"], failed["cause"], failed["ref"]) == ("fail", "recipe", known_good), failed
    assert f"No such image: {own_image}" in failed["error"], failed["error"]
    assert "taken" not in failed["snapshot"], failed["snapshot"]
    assert bed.remote_subjects()[0].startswith(f"[rewarm] {bed.recipe}@{known_good[:7]} fail")
    # The same last-known-good, byte for byte, and the same index entry in the same commit.
    after = bed.snapshot()
    assert (after.manifest_sha256, bed.generation()) == (before.manifest_sha256, generation)
    assert snapshots.verify_snapshot(bed.state / "snapshots", bed.app) == before
    assert (bed.remote_text(bed.index_rel), bed.index_history()) == (index_text, history)
    assert stack.live_tasks(bed.app) == [] and bed.leaks().returncode == 0


# -- 4: SIGKILL mid-snapshot and mid-upgrade, then a restart -------------------------------------

# `ccci` whose snapshot takes SIGKILL the process once the new generation is copied and verified,
# before it becomes last-known-good: the exact middle of a rewarm's snapshot.
KILLED_AT_THE_SWAP = """
import os, signal, sys
from controller.snapshots import store

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

store.swap_link = die
from controller.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_killed_mid_rewarm_snapshot_keeps_the_old_one_and_the_next_serve_redoes_the_rewarm(
        bed: Bed) -> None:
    first = bed.seed()
    before = bed.snapshot()
    generation, index_text, history = bed.generation(), bed.remote_text(bed.index_rel), bed.index_history()
    v2 = bed.repo.commit_version(2)  # merged: its green cold run promotes and queues a rewarm
    cold_run = bed.request(v2)
    with (bed.state.parent / "killed-serve.log").open("w") as out:
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_AT_THE_SWAP, "--state-dir", str(bed.state), "serve", "--registry",
             str(bed.clone), "--once", "--poll-interval", "0.3"],
            stdout=out, stderr=subprocess.STDOUT, cwd=helpers.REPO_ROOT, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, (bed.state.parent / "killed-serve.log").read_text()[-3000:]

    cold = bed.remote_results()[cold_run]
    assert cold["outcome"] == "pass" and cold["canonical"]["advanced"], cold
    markers = [json.loads(p.read_text()) for p in (bed.state / "runs").glob("*.json")]
    assert [(m["mode"], m["recipe"]) for m in markers] == [("rewarm", bed.recipe)], markers
    killed_rewarm = markers[0]["run"]
    # Killed before the swap: the old last-known-good stands, the index still names it, the
    # volumes are dirty (they hold v2's start), and the rewarm is still queued.
    assert (bed.snapshot().manifest_sha256, bed.generation()) == (before.manifest_sha256, generation)
    assert snapshots.verify_snapshot(bed.state / "snapshots", bed.app) == before
    assert (bed.remote_text(bed.index_rel), bed.index_history()) == (index_text, history)
    assert not snapshots.volumes_clean(bed.state / "snapshots", bed.app)
    assert bed.queued_rewarms() == [f"rewarm-{bed.recipe}"]

    restarted = bed.ccci("serve", "--registry", str(bed.clone), "--once", "--poll-interval", "0.3")

    assert restarted.returncode == 0, restarted.stderr[-3000:]
    results = bed.remote_results()
    assert killed_rewarm not in results  # a rewarm has no claim: nothing to abort
    assert not list((bed.state / "runs").iterdir())
    redone = [r for r in results.values() if r["mode"] == "rewarm" and r["run"] != first["run"]]
    assert [(r["outcome"], r["ref"]) for r in redone] == [("pass", v2)], redone
    # It started from the last-known-good bytes, and its snapshot is the new last-known-good.
    assert redone[0]["snapshot"] == {"restored": True, "verified": True, "taken": bed.snapshot().manifest_sha256}
    index = load_untrusted((bed.remote_text(bed.index_rel) or "").encode(), bed.index_rel)
    assert (index["commit"], index["taken_by_run"]) == (v2, redone[0]["run"]), index
    assert bed.queued_rewarms() == []
    assert bed.live_volumes() == "equal the snapshot"
    assert bed.leaks().returncode == 0


class ForegroundRun:
    """`ccci run` in a session of its own, its progress lines (`… phase`, `✓ phase`) read as
    they come, so the test can SIGKILL it — `docker` children and all — at an exact phase."""

    def __init__(self, bed: Bed, run_id: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--state-dir", str(bed.state), "run", "--registry",
             str(bed.clone), run_id], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            cwd=helpers.REPO_ROOT, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.strip())

    def wait_for_line(self, line: str, timeout: float) -> None:
        wait_for(lambda: line in self.lines or self.proc.poll() is not None, timeout, repr(line))
        assert line in self.lines, self.lines

    def stop(self) -> None:
        """SIGKILL the whole session (a no-op once the run has ended)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=10)

    def kill_at(self, line: str, timeout: float) -> None:
        try:
            self.wait_for_line(line, timeout)
        finally:
            self.stop()


def test_quick_run_killed_mid_upgrade_is_aborted_at_restart_and_the_next_quick_restores_the_snapshot(
        bed: Bed) -> None:
    bed.seed()
    index_text = bed.remote_text(bed.index_rel)
    pr_head = bed.repo.branch_commit("pr-upgrade", 2)
    run_id = bed.request(pr_head, mode="quick")
    # Killed once the PR head is deployed over the reattached known-good: swarm is replacing
    # the task, the volume already holds the new starts.
    ForegroundRun(bed, run_id).kill_at("✓ upgrade", timeout=120)

    assert bed.remote_results()[run_id]["outcome"] == "running"
    assert stack.inspect_app(bed.app).services, "the kill should have left the app deployed"
    leaks = bed.leaks()
    assert leaks.returncode == 1 and bed.app in leaks.stdout, leaks.stdout
    assert bed.live_volumes() == "differ"

    restarted = bed.ccci("serve", "--registry", str(bed.clone), "--once", "--poll-interval", "0.3")

    assert restarted.returncode == 0, restarted.stderr[-3000:]
    aborted = bed.remote_results()[run_id]
    assert (aborted["outcome"], aborted["cause"], aborted["mode"]) == ("aborted", "infra", "quick"), aborted
    assert bed.remote_subjects()[0].startswith(f"[quick] {bed.recipe}@{pr_head[:7]} aborted (run {run_id})")
    assert not stack.inspect_app(bed.app).services
    assert bed.leaks().returncode == 0
    assert bed.remote_text(bed.index_rel) == index_text

    # The next quick run starts from the last-known-good bytes, then tests the upgrade again.
    again = bed.run(bed.request(pr_head, mode="quick"))
    assert again["outcome"] == "pass", again
    assert again["snapshot"] == {"restored": True, "verified": True}, again["snapshot"]
    assert list(phases(again))[:4] == ["lock", "fetch", "policy", "restore"]  # judged before it is touched
    assert bed.leaks().returncode == 0



def test_quick_run_killed_after_its_verdict_keeps_it_and_the_restart_finishes_its_housekeeping(
        bed: Bed) -> None:
    """Verdict first, then a SIGKILL while the run undeploys after it: the pass is on the remote
    already; the restart undeploys the app and records finished_at without touching the verdict;
    the volumes stay dirty, so the next quick run restores the last-known-good first."""
    bed.seed()
    pr_head = bed.repo.branch_commit("pr-upgrade", 2)
    run_id = bed.request(pr_head, mode="quick")
    ForegroundRun(bed, run_id).kill_at("… teardown", timeout=180)

    verdict = bed.remote_results()[run_id]
    assert (verdict["outcome"], verdict["finished_at"]) == ("pass", None), verdict
    assert verdict["verdict_at"] and "housekeeping" not in verdict

    restarted = bed.ccci("serve", "--registry", str(bed.clone), "--once", "--poll-interval", "0.3")

    assert restarted.returncode == 0, restarted.stderr[-3000:]
    finished = bed.remote_results()[run_id]
    assert finished["outcome"] == "pass" and finished["finished_at"], finished
    assert finished["housekeeping"]["status"] == "recovered", finished["housekeeping"]
    assert bed.remote_subjects()[0] == (f"[quick] {bed.recipe}@{pr_head[:7]} pass (run {run_id}); "
                                        "housekeeping finished by recovery")
    assert not stack.inspect_app(bed.app).services
    assert bed.leaks().returncode == 0
    again = bed.run(bed.request(pr_head, mode="quick"))
    assert again["outcome"] == "pass", again
    assert again["snapshot"] == {"restored": True, "verified": True}, again["snapshot"]
    assert bed.ccci("audit", "--registry", str(bed.clone)).returncode == 0


def test_restart_aborts_a_killed_quick_run_without_touching_the_next_one_in_flight_on_the_app(
        bed: Bed) -> None:
    """A controller sharing the state dir restarts while the app's next quick run is mid-way:
    recovery aborts the dead run, but the app now belongs to the live one (it holds the app's
    lock), so recovery must leave its deployment alone."""
    bed.seed()
    pr_head = bed.repo.branch_commit("pr-upgrade", 2)
    killed = bed.request(pr_head, mode="quick")
    ForegroundRun(bed, killed).kill_at("✓ upgrade", timeout=120)
    live = bed.request(pr_head, mode="quick")
    in_flight = ForegroundRun(bed, live)
    try:
        in_flight.wait_for_line("✓ upgrade", timeout=120)
        os.killpg(in_flight.proc.pid, signal.SIGSTOP)  # held right there while the restart recovers
        try:
            restarted = bed.ccci("serve", "--registry", str(bed.clone), "--once", "--poll-interval", "0.3")
            services = stack.inspect_app(bed.app).services
        finally:
            os.killpg(in_flight.proc.pid, signal.SIGCONT)
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        assert bed.remote_results()[killed]["outcome"] == "aborted"
        assert [s.commit for s in services] == [pr_head], "recovery undeployed the live run's app"
        assert in_flight.proc.wait(timeout=120) == 0, in_flight.lines
    finally:
        in_flight.stop()
    result = bed.remote_results()[live]
    assert result["outcome"] == "pass", result
    assert result["snapshot"] == {"restored": True, "verified": True}, result["snapshot"]
    assert bed.leaks().returncode == 0


# -- 5: a quick upgrade the swarm refuses to deploy -----------------------------------------------

@contextlib.contextmanager
def configs_seen(app: str) -> Iterator[set[str]]:
    """The names of every swarm config of `app` that existed while the block ran."""
    seen: set[str] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        client = docker.from_env(timeout=30)
        try:
            while not stop.is_set():
                found = client.configs.list(filters={"label": f"com.docker.stack.namespace={app}"})
                seen.update(c.name for c in found)
                stop.wait(0.1)
        except BaseException as exc:  # a dead watcher would make `seen` meaningless
            errors.append(exc)
        finally:
            client.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join()
    assert not errors, errors


def test_quick_upgrade_that_docker_refuses_to_deploy_fails_as_the_recipe_and_is_rolled_back(bed: Bed) -> None:
    """Not an unhealthy app: `docker stack deploy` of the PR head fails — once in the CLI before
    anything changes (a duration without a valid unit), once in the swarm after the CLI made the
    new version's config (a placement constraint with `=` for `==`). Either way: fail, cause
    recipe, the known-good's bytes restored and verified, nothing left behind."""
    bed.seed()
    index_text = bed.remote_text(bed.index_rel)
    v1 = bed.repo.head()
    compose = bed.repo.read(v1, "compose.yml")
    v2_files = {rel: (RECIPES / "static" / "2" / rel).read_text()
                for rel in ("abra.sh", "index.html", "tests/ccci-assert")}
    cli_refuses = bed.repo.commit_files("pr-grace", {
        **v2_files, "compose.yml": compose.replace("stop_grace_period: 1s", "stop_grace_period: 1min")})
    swarm_refuses = bed.repo.commit_files("pr-placement", {
        **v2_files, "compose.yml": compose.replace(
            "    deploy:\n", "    deploy:\n      placement:\n        constraints: [\"node.role = manager\"]\n")})
    refusals = {cli_refuses: "stop_grace_period Does not match format 'duration'",
                swarm_refuses: "constraint expected one operator from ==, !="}

    for head, refusal in refusals.items():
        with configs_seen(bed.app) as seen:
            result = bed.run(bed.request(head, mode="quick"))

        assert (result["outcome"], result["cause"]) == ("fail", "recipe"), result
        assert f"deploy of {bed.app} failed" in result["error"] and refusal in result["error"], result["error"]
        assert phases(result)["upgrade"] == "failed" and phases(result)["rollback"] == "ok", result["phases"]
        assert result["snapshot"] == {"restored": True, "verified": True}, result["snapshot"]
        assert bed.live_volumes() == "equal the snapshot"
        # The CLI refuses before it creates anything; the swarm after the new config exists.
        assert (f"{bed.app}_index_v2" in seen) is (head == swarm_refuses), seen
        # Undeployed, the PR's new config (index v2) included: only the warm volume stays.
        assert helpers.objects_of_app(bed.app) == [f"volume {bed.app}_data"]
        assert bed.leaks().returncode == 0
    assert bed.remote_text(bed.index_rel) == index_text
