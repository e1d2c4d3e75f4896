"""Warm canonicals on the real swarm: the rollback proof, no-canonical policies, per-app
serialisation of quick runs, and re-warming from scratch."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import snapshots
from controller.flows.prune import warm_image_refs
from controller.runtime import stack
from controller.util.paths import StateDir
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.conftest import XFS_MOUNT
from tests.helpers import NOTES_OPTIONS, STATIC_OPTIONS, RemoteRegistry, recipe_entry
from tests.test_cold import run_request
from tests.test_upgrade import deploy_commit, upgrade_moved

pytestmark = pytest.mark.docker


def rewarm(clone: Path, state: Path, recipe: str) -> subprocess.CompletedProcess[str]:
    return helpers.ccci("--state-dir", str(state), "canonical", "rewarm", recipe, "--registry", str(clone))


def remove_warm_app(app: str) -> None:
    """Warm data outlives runs by design; tests clean up after themselves."""
    stack.undeploy(app, remove_volumes=True)


def tracked(clone: Path, *paths: str) -> dict[str, str]:
    return {p: (clone / p).read_text() if (clone / p).exists() else "" for p in paths} | {
        "log": helpers.git(clone, "log", "--format=%H", "--", *paths)}


def manifests_equal_snapshot(state: Path, app: str) -> None:
    """The live volumes equal the last-known-good entry for entry (path, type, mode, owner,
    size, mtime, sha256, link target)."""
    store = state / "snapshots"
    saved = snapshots.snapshot_manifest(store, app)
    live = stack.volume_paths(app)
    assert set(saved) <= set(live)
    for name, entries in saved.items():
        assert snapshots.volume_manifest(live[name]) == entries, f"volume {name} differs"


@pytest.fixture
def notes_repo(tmp_path: Path, docker_host: str) -> RecipeRepo:
    return build_recipe("notes", tmp_path / "recipes" / "notes")


@pytest.fixture(params=["disk", "xfs"])
def proof_state(request: pytest.FixtureRequest, state_dir: Path,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """The rollback proof's state dir: on the normal disk, or on the test bed's XFS (where the
    proof also moves the warm app's volumes, so its snapshots are cloned)."""
    if request.param == "disk":
        return state_dir
    state: Path = request.getfixturevalue("xfs_tmp") / "state"
    state.mkdir()
    monkeypatch.setenv("CCCI_STATE_DIR", str(state))
    return state


@contextlib.contextmanager
def volumes_moved_to(app: str, root: Path | None) -> Iterator[None]:
    """Give the undeployed app's volumes a home below `root` (None: leave them): copy each
    volume's data there and bind-mount it over the engine's `_data` directory, as an operator
    who puts the engine's volumes on XFS would. Unmounted before the volumes are removed."""
    mounted: list[Path] = []
    try:
        if root is not None:
            for name, data in sorted(stack.volume_paths(app).items()):
                home = root / "volumes" / name
                home.mkdir(parents=True)
                subprocess.run(["cp", "-a", f"{data}/.", str(home)], check=True)
                subprocess.run(["mount", "--bind", str(home), str(data)], check=True)
                mounted.append(data)
            assert mounted
        yield
    finally:
        for data in mounted:
            subprocess.run(["umount", str(data)], check=False)


def files_sharing_extents(root: Path) -> int:
    """How many files below `root` share an extent with another file (cloned, on XFS)."""
    out = subprocess.run(["sh", "-c", 'find "$1" -type f -exec filefrag -v {} +', "-", str(root)],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for block in out.split("\nFilesystem type") if "shared" in block)


def test_quick_rollback_proof_on_notes(git_remote: RemoteRegistry, notes_repo: RecipeRepo,
                                       proof_state: Path) -> None:
    """docs/warm.md 'The rollback proof', step by step; on the normal disk and on XFS (under
    its own recipe name, so its warm app never meets the other's on a shared engine)."""
    state_dir = proof_state
    on_xfs = proof_state.parent.parent == XFS_MOUNT
    recipe = "notes-on-xfs" if on_xfs else "notes"
    git_remote.set_recipes(recipe_entry(recipe, notes_repo.path, **NOTES_OPTIONS, follow_up_cold="true"))
    clone = git_remote.clone("controller")
    app = f"warm-{recipe}"
    v1 = notes_repo.versions[1]
    try:
        # Seed: a green cold of v1 makes the canonical; the rewarm makes the snapshot.
        _run, cold = run_request(clone, state_dir, recipe, v1)
        assert cold["outcome"] == "pass" and cold["canonical"]["advanced"]
        warmed = rewarm(clone, state_dir, recipe)
        assert warmed.returncode == 0, warmed.stdout + warmed.stderr
        index = helpers.read_yaml(clone / "snapshots-index" / helpers.HOST / f"{app}.yaml")
        assert index["commit"] == v1
        assert helpers.log_subjects(clone)[0].startswith(f"[rewarm] {recipe}@{v1[:7]} pass")
        # Prune must keep what reattaching the snapshot's commit needs.
        assert warm_image_refs(StateDir(state_dir))[0] == {
            "ccci-test/python:bookworm": app, "ccci-test/postgres:15": app}
        before = tracked(clone, f"canonicals/{recipe}.yaml", f"snapshots-index/{helpers.HOST}/{app}.yaml")
        digest = snapshots.current_snapshot(state_dir / "snapshots", app).manifest_sha256  # type: ignore[union-attr]
        with volumes_moved_to(app, state_dir.parent if on_xfs else None):
            rollback_proof_after_the_snapshot(clone, state_dir, notes_repo, recipe, before, digest)
            if on_xfs:  # the restore cloned what it rewrote from the snapshot
                assert sum(files_sharing_extents(p) for p in stack.volume_paths(app).values()) > 0
    finally:
        remove_warm_app(app)


def rollback_proof_after_the_snapshot(clone: Path, state_dir: Path, notes_repo: RecipeRepo,
                                      recipe: str, before: dict[str, str], digest: str) -> None:
    app = f"warm-{recipe}"
    v1, v2, v3 = (notes_repo.versions[n] for n in (1, 2, 3))
    # Quick of v2 passes: upgrade on real data; canonical and snapshot untouched.
    _run, quick2 = run_request(clone, state_dir, recipe, v2, mode="quick")
    assert quick2["outcome"] == "pass", quick2
    assert (quick2["mode"], quick2["gating"]) == ("quick", False)
    assert {a["name"] for a in quick2["asserts"] if a["ok"]} >= {"commit", "custom:tests/ccci-assert"}
    assert tracked(clone, f"canonicals/{recipe}.yaml", f"snapshots-index/{helpers.HOST}/{app}.yaml") == before
    assert snapshots.current_snapshot(state_dir / "snapshots", app).manifest_sha256 == digest  # type: ignore[union-attr]
    assert not snapshots.volumes_clean(state_dir / "snapshots", app)  # v2 migrated the data
    assert "follow_up" not in quick2  # a pass files no follow-up cold

    # Quick of broken v3 fails; the volume comes back byte for byte.
    _run, quick3 = run_request(clone, state_dir, recipe, v3, mode="quick")
    assert quick3["outcome"] == "fail" and quick3["cause"] == "recipe", (quick3["error"], quick3["phases"])
    assert quick3["snapshot"] == {"restored": True, "verified": True}, quick3.get("housekeeping")
    # The verdict was committed before the rollback; the rollback is in the second commit.
    assert quick3["housekeeping"] == {"status": "done"}
    assert quick3["verdict_at"] <= quick3["finished_at"]
    assert "rollback" in [p["name"] for p in quick3["phases"]]
    # The recipe opts in: the failed quick run filed a cold run of v3, in its verdict's commit.
    follow_up = helpers.read_yaml(clone / "requests" / f"{quick3['follow_up']}.yaml")
    assert follow_up == {"recipe": recipe, "ref": v3, "mode": "cold", "requested_by": "alice",
                         "trigger": f"follow-up of the failed quick run {_run}", "follow_up_of": _run}
    assert tracked(clone, f"canonicals/{recipe}.yaml", f"snapshots-index/{helpers.HOST}/{app}.yaml") == before
    manifests_equal_snapshot(state_dir, app)
    verify = helpers.ccci("--state-dir", str(state_dir), "snapshot", "verify", app, "--paranoid")
    assert "live volumes equal the snapshot" in verify.stdout, verify.stdout + verify.stderr

    # The app deploys healthy on the restored data.
    port = helpers_free_port()
    deploy_commit(notes_repo, v1, app, port, state_dir.parent / "redeploy",
                  owner=StateDir(state_dir).owner_id)
    assert upgrade_moved(app, v1, timeout=120) == []
    stats = __import__("json").loads(__import__("urllib.request").request.urlopen(
        f"http://127.0.0.1:{port}/stats", timeout=10).read())
    assert stats["schema"] == 1 and stats["attachments"] == 300
    assert helpers.ccci("--state-dir", str(state_dir), "leaks").returncode == 1  # deployed, no lock
    stack.undeploy(app, remove_volumes=False)
    assert helpers.ccci("--state-dir", str(state_dir), "leaks").returncode == 0
    assert helpers.ccci("audit", "--registry", str(clone)).returncode == 0


def helpers_free_port() -> int:
    from controller.runtime.probe import free_port

    return free_port()


def test_snapshot_round_trip_on_real_volumes_after_broken_v3(
        git_remote: RemoteRegistry, notes_repo: RecipeRepo, state_dir: Path) -> None:
    """Take; let broken v3 add, delete, modify and chmod files; restore; equal byte for byte."""
    git_remote.set_recipes(recipe_entry("notes", notes_repo.path, **NOTES_OPTIONS, follow_up_cold="true"))
    clone = git_remote.clone("controller")
    app = "warm-notes"
    v1, v2, v3 = (notes_repo.versions[n] for n in (1, 2, 3))
    try:
        port = helpers_free_port()
        deploy_commit(notes_repo, v1, app, port, state_dir.parent / "w1")
        assert upgrade_moved(app, v1, timeout=180) == []
        refused = helpers.ccci("--state-dir", str(state_dir), "snapshot", "take", app, "--commit", v1)
        assert refused.returncode == 1 and "live tasks" in refused.stderr
        stack.undeploy(app, remove_volumes=False)
        taken = helpers.ccci("--state-dir", str(state_dir), "snapshot", "take", app, "--commit", v1,
                             "--registry", str(clone))
        assert taken.returncode == 0, taken.stderr
        assert helpers.log_subjects(clone)[0].startswith(f"[snapshot] {app}@{v1[:7]} taken")
        # v2 then broken v3 on the same volumes (v3 fails its healthcheck after damaging data).
        deploy_commit(notes_repo, v2, app, port, state_dir.parent / "w2")
        assert upgrade_moved(app, v2, timeout=180) == []
        deploy_commit(notes_repo, v3, app, port, state_dir.parent / "w3")
        assert upgrade_moved(app, v3, timeout=40)  # never healthy
        stack.undeploy(app, remove_volumes=False)
        live = stack.volume_paths(app)
        damaged = {e.path: e for e in snapshots.volume_manifest(live["data"])}
        saved = {e.path: e for e in snapshots.snapshot_manifest(state_dir / "snapshots", app)["data"]}
        assert set(damaged) - set(saved), "v3 adds files"
        assert set(saved) - set(damaged), "v3 deletes files"
        assert any(damaged[p].sha256 != saved[p].sha256 for p in set(saved) & set(damaged)), "modifies"
        assert any(damaged[p].mode != saved[p].mode for p in set(saved) & set(damaged)), "chmods"
        restored = helpers.ccci("--state-dir", str(state_dir), "snapshot", "restore", app)
        assert restored.returncode == 0, restored.stderr
        manifests_equal_snapshot(state_dir, app)
        deploy_commit(notes_repo, v1, app, port, state_dir.parent / "w4")
        assert upgrade_moved(app, v1, timeout=120) == []
        stack.undeploy(app, remove_volumes=False)
    finally:
        remove_warm_app(app)


@pytest.fixture
def two_static_recipes(git_remote: RemoteRegistry, tmp_path: Path, docker_host: str) -> tuple[Path, RecipeRepo]:
    repo = build_recipe("static", tmp_path / "recipes" / "static")
    git_remote.set_recipes(recipe_entry("static-a", repo.path, **STATIC_OPTIONS)
                           + recipe_entry("static-b", repo.path, **STATIC_OPTIONS))
    return git_remote.clone("controller"), repo


@pytest.mark.parametrize("policy", ["fallback-cold", "reject"])
def test_quick_without_canonical_follows_policy(git_remote: RemoteRegistry, tmp_path: Path,
                                                state_dir: Path, docker_host: str, policy: str) -> None:
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    git_remote.set_recipes(recipe_entry("static", repo.path, **STATIC_OPTIONS),
                           extra=f"quick: {{no_canonical: {policy}}}\n")
    clone = git_remote.clone("controller")
    _run, result = run_request(clone, state_dir, "static", repo.versions[1], mode="quick")
    if policy == "fallback-cold":
        assert result["outcome"] == "pass", result
        assert (result["mode"], result["requested_mode"], result["fallback"]) == ("cold", "quick", "no-canonical")
        assert helpers.log_subjects(clone)[0].startswith("[cold] static@")
    else:
        assert result["outcome"] == "rejected"
        assert "quick.no_canonical is reject" in result["error"]
        assert helpers.log_subjects(clone)[0].startswith("[reject] static@")


def test_quick_runs_serialise_per_app_and_overlap_across_apps(
        two_static_recipes: tuple[Path, RecipeRepo], state_dir: Path, git_remote: RemoteRegistry) -> None:
    clone, repo = two_static_recipes
    v1, v2 = repo.versions[1], repo.versions[2]
    try:
        for recipe in ("static-a", "static-b"):
            _run, cold = run_request(clone, state_dir, recipe, v1)
            assert cold["outcome"] == "pass"
            assert rewarm(clone, state_dir, recipe).returncode == 0
        run_ids = []
        for recipe in ("static-a", "static-a", "static-b"):
            run_ids.append(helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(clone),
                                        "--recipe", recipe, "--ref", v2, "--mode", "quick", "--by", "alice",
                                        check=True).stdout.strip())
        # Three quick runs at once, in three processes.
        threads = [threading.Thread(target=helpers.ccci, args=("--state-dir", str(state_dir), "run",
                                                               "--registry", str(clone), r)) for r in run_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results = helpers.results_in(clone)
        docs = [results[r] for r in run_ids]
        assert [d["outcome"] for d in docs] == ["pass", "pass", "pass"], docs
        a1, a2, b = (d["lock"] for d in docs)
        first, second = sorted((a1, a2), key=lambda lock: lock["acquired_at"])
        assert first["released_at"] <= second["acquired_at"], (first, second)  # one after the other
        assert b["acquired_at"] < second["released_at"] and first["acquired_at"] < b["released_at"], (a1, a2, b)
    finally:
        remove_warm_app("warm-static-a")
        remove_warm_app("warm-static-b")


def test_rewarm_from_scratch_after_losing_volumes_and_snapshot(
        two_static_recipes: tuple[Path, RecipeRepo], state_dir: Path) -> None:
    clone, repo = two_static_recipes
    app = "warm-static-a"
    try:
        _run, cold = run_request(clone, state_dir, "static-a", repo.versions[1])
        assert cold["outcome"] == "pass"
        assert rewarm(clone, state_dir, "static-a").returncode == 0
        first = helpers.read_yaml(clone / "snapshots-index" / helpers.HOST / f"{app}.yaml")
        remove_warm_app(app)
        import shutil

        shutil.rmtree(state_dir / "snapshots" / app)
        again = rewarm(clone, state_dir, "static-a")
        assert again.returncode == 0, again.stdout + again.stderr
        second = helpers.read_yaml(clone / "snapshots-index" / helpers.HOST / f"{app}.yaml")
        assert second["commit"] == first["commit"] and second["taken_by_run"] != first["taken_by_run"]
        assert snapshots.verify_snapshot(state_dir / "snapshots", app).commit == repo.versions[1]
    finally:
        remove_warm_app(app)


def test_stateless_recipe_gets_an_empty_snapshot_and_quick_runs(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> None:
    """A recipe without volumes still has a warm app: its snapshot is empty, quick still tests
    the upgrade (and the rollback has nothing to restore)."""
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    stateless = {}
    for version in (1, 2):
        compose = repo.read(repo.versions[1], "compose.yml").replace(
            'command: ["sh", "-c", "date >> /data/starts.log && exec httpd -f -v -p 80 -h /www"]',
            'command: ["httpd", "-f", "-v", "-p", "80", "-h", "/www"]').replace(
            "    volumes:\n      - data:/data\n", "").replace("volumes:\n  data:\n\n", "")
        assert "volumes" not in compose
        stateless[version] = repo.commit_files("main", {
            "compose.yml": compose, "index.html": f"<h1>static fixture v{version}</h1>\n",
            # Configs are immutable in swarm: a changed file needs a new version in its name.
            "abra.sh": repo.read(repo.versions[1], "abra.sh").replace(
                "export INDEX_VERSION=v1", f"export INDEX_VERSION=v{version}"),
            "tests/ccci-assert": repo.read(repo.versions[1], "tests/ccci-assert").replace(
                "static fixture v1", f"static fixture v{version}")}, message=f"stateless v{version}")
    git_remote.set_recipes(recipe_entry("static", repo.path, **STATIC_OPTIONS))
    clone = git_remote.clone("controller")
    try:
        _run, cold = run_request(clone, state_dir, "static", stateless[1])
        assert cold["outcome"] == "pass" and cold["canonical"]["advanced"], cold
        assert rewarm(clone, state_dir, "static").returncode == 0
        assert helpers.read_yaml(clone / "snapshots-index" / helpers.HOST / "warm-static.yaml")["volumes"] == {}
        _run, quick = run_request(clone, state_dir, "static", stateless[2], mode="quick")
        assert quick["outcome"] == "pass" and quick["mode"] == "quick", quick
        assert "note" not in quick["upgrade"]
        # The known-good itself: it passes, and the result says no upgrade path was tested.
        _run, same = run_request(clone, state_dir, "static", stateless[1], mode="quick")
        assert same["outcome"] == "pass", same
        assert same["upgrade"]["note"] == "the PR head is the snapshot's commit: no upgrade path was tested"
    finally:
        remove_warm_app("warm-static")


def test_a_volume_a_pr_added_is_gone_when_the_next_quick_run_restores(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> None:
    """Hermetic quick runs: a volume the last-known-good does not have holds a PR's data, so the
    next restore removes it (and says so in the result)."""
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    v1 = repo.versions[1]
    compose = repo.read(v1, "compose.yml")
    with_extra = compose.replace("date >> /data/starts.log &&", "date >> /data/starts.log && echo pr > /extra/pr &&") \
        .replace("      - data:/data\n", "      - data:/data\n      - extra:/extra\n") \
        .replace("volumes:\n  data:\n", "volumes:\n  data:\n  extra:\n")
    assert with_extra.count("extra") == 4
    pr_head = repo.commit_files("pr-extra-volume", {"compose.yml": with_extra}, message="add a volume")
    git_remote.set_recipes(recipe_entry("static", repo.path, **STATIC_OPTIONS))
    clone = git_remote.clone("controller")
    app = "warm-static"
    try:
        _run, cold = run_request(clone, state_dir, "static", v1)
        assert cold["outcome"] == "pass", cold
        assert rewarm(clone, state_dir, "static").returncode == 0
        _run, pr = run_request(clone, state_dir, "static", pr_head, mode="quick")
        assert pr["outcome"] == "pass", pr
        assert set(stack.volume_paths(app)) == {"data", "extra"}  # kept: a passing quick keeps its volumes
        _run, again = run_request(clone, state_dir, "static", v1, mode="quick")
        assert again["outcome"] == "pass", again
        assert again["snapshot"]["volumes_removed"] == ["extra"], again["snapshot"]
        assert set(stack.volume_paths(app)) == {"data"}
    finally:
        remove_warm_app(app)


def test_a_quick_run_upgrades_as_soon_as_the_known_good_runs_healthy_and_judges_over_the_window(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> None:
    """The reattached known-good is where the upgrade starts from, not what is judged: the run
    upgrades once every replica runs healthy at the known-good's commit, without the recipe's
    stability window (which the known-good stayed up through before its snapshot was taken);
    the upgraded app is judged over the whole window."""
    window = 10
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1, 2])
    git_remote.set_recipes(recipe_entry("static", repo.path, timeout_s=120, stability_s=window))
    clone = git_remote.clone("controller")
    try:
        _run, cold = run_request(clone, state_dir, "static", repo.versions[1])
        assert cold["outcome"] == "pass", cold
        assert rewarm(clone, state_dir, "static").returncode == 0
        _run, quick = run_request(clone, state_dir, "static", repo.versions[2], mode="quick")
        assert quick["outcome"] == "pass", quick
        seconds = {p["name"]: p["seconds"] for p in quick["phases"]}
        assert seconds["converge (reattach)"] < window <= seconds["converge"], seconds
    finally:
        remove_warm_app("warm-static")
