"""Cold runs on the real swarm: verdicts, cause classes, sacred teardown, crash recovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.flows import rewarm, runs
from controller.flows.context import open_context
from controller.util import names
from controller.util.yamlio import load_untrusted
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import NOTES_OPTIONS, STATIC_OPTIONS, RemoteRegistry, recipe_entry

pytestmark = pytest.mark.docker


@pytest.fixture
def recipes(tmp_path: Path) -> dict[str, RecipeRepo]:
    return {name: build_recipe(name, tmp_path / "recipes" / name) for name in ("notes", "static", "stuck")}


@pytest.fixture
def controller_clone(git_remote: RemoteRegistry, recipes: dict[str, RecipeRepo], docker_host: str) -> Path:
    git_remote.set_recipes(
        recipe_entry("notes", recipes["notes"].path, **NOTES_OPTIONS)
        + recipe_entry("static", recipes["static"].path, **STATIC_OPTIONS)
        + recipe_entry("stuck", recipes["stuck"].path, timeout_s=20, stability_s=1))
    return git_remote.clone("controller")


def run_request(clone: Path, state: Path, recipe: str, ref: str, mode: str = "cold") -> tuple[str, dict]:
    run_id = helpers.ccci("--state-dir", str(state), "request", "--registry", str(clone), "--recipe",
                          recipe, "--ref", ref, "--mode", mode, "--by", "alice", check=True).stdout.strip()
    # The rewarm a promotion queues is proven in test_canonical; here it would only cost time.
    proc = helpers.ccci("--state-dir", str(state), "run", "--registry", str(clone), run_id, "--no-rewarm")
    results = helpers.results_in(clone)
    assert run_id in results, proc.stderr
    return run_id, results[run_id]


def test_cold_notes_v1_passes_and_leaves_nothing(controller_clone: Path, state_dir: Path,
                                                  recipes: dict[str, RecipeRepo]) -> None:
    run_id, result = run_request(controller_clone, state_dir, "notes", recipes["notes"].versions[1])
    assert result["outcome"] == "pass", result
    assert (result["mode"], result["requested_mode"], result["gating"]) == ("cold", "cold", True)
    asserts = {a["name"]: a["ok"] for a in result["asserts"]}
    assert asserts == {"converged": True, "no-restart-loop": True, "healthchecks": True, "http": True,
                     "commit": True, "custom:tests/ccci-assert": True}
    assert [p["name"] for p in result["phases"]] == ["fetch", "policy", "deploy", "converge", "asserts", "teardown"]
    custom = next(a for a in result["asserts"] if a["name"] == "custom:tests/ccci-assert")
    assert f"{helpers.NOTES_SEED_ROWS} notes" in custom["detail"]  # ccci.yaml env reached the stack
    assert helpers.objects_of_app(names.cold_app("notes", run_id)) == []
    short = recipes["notes"].versions[1][:7]
    assert helpers.log_subjects(controller_clone)[:3] == [
        f"[cold] notes@{short} pass (run {run_id}); housekeeping done",  # the teardown came after
        f"[cold] notes@{short} pass (run {run_id}); canonical advanced",  # the verdict, promoting
        f"[cold] notes@{short} running (run {run_id})"]
    verdict = load_untrusted(helpers.git(controller_clone, "show", f"HEAD~1:{names.result_rel(run_id)}").encode(),
                             "the verdict commit's result", max_bytes=1 << 20)
    assert verdict["outcome"] == "pass" and verdict["finished_at"] is None
    assert [p["name"] for p in verdict["phases"]] == ["fetch", "policy", "deploy", "converge", "asserts"]
    assert verdict["verdict_at"] == result["verdict_at"] <= result["finished_at"]
    assert result["housekeeping"] == {"status": "done"}


def test_cold_notes_v3_fails_with_cause_recipe_and_leaves_nothing(
        controller_clone: Path, state_dir: Path, recipes: dict[str, RecipeRepo]) -> None:
    run_id, result = run_request(controller_clone, state_dir, "notes", recipes["notes"].versions[3])
    assert result["outcome"] == "fail", result
    assert result["cause"] == "recipe", result
    assert result["canonical"]["advanced"] is False
    assert helpers.objects_of_app(names.cold_app("notes", run_id)) == []
    assert not (controller_clone / "canonicals" / "notes.yaml").exists()


def test_recipe_that_never_converges_fails_with_cause_timeout_within_its_deadline(
        controller_clone: Path, state_dir: Path, recipes: dict[str, RecipeRepo]) -> None:
    started = time.monotonic()
    run_id, result = run_request(controller_clone, state_dir, "stuck", recipes["stuck"].versions[1])
    elapsed = time.monotonic() - started
    assert result["outcome"] == "fail" and result["cause"] == "timeout", result
    converge = next(p for p in result["phases"] if p["name"] == "converge")
    assert converge["seconds"] <= 20 + 2, converge
    assert elapsed < 20 + 60  # deadline plus teardown and process start-up
    assert helpers.objects_of_app(names.cold_app("stuck", run_id)) == []


def test_unknown_ref_is_rejected_after_claim(controller_clone: Path, state_dir: Path) -> None:
    _run_id, result = run_request(controller_clone, state_dir, "static", "c" * 40)
    assert result["outcome"] == "rejected"
    assert "has no commit" in result["error"]


def test_sigkilled_cold_run_is_removed_by_next_serve_start(
        controller_clone: Path, state_dir: Path, recipes: dict[str, RecipeRepo]) -> None:
    run_id = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(controller_clone),
                          "--recipe", "notes", "--ref", recipes["notes"].versions[1], "--by", "alice",
                          check=True).stdout.strip()
    app = names.cold_app("notes", run_id)
    helpers.kill_mid_run_then_serve(state_dir, controller_clone, run_id, app)
    result = helpers.results_in(controller_clone)[run_id]
    assert result["outcome"] == "aborted", result
    leaks = helpers.ccci("--state-dir", str(state_dir), "leaks")
    assert app not in leaks.stdout


def test_a_run_that_dies_after_its_verdict_is_finished_by_recovery_with_the_verdict_unchanged(
        controller_clone: Path, state_dir: Path, recipes: dict[str, RecipeRepo]) -> None:
    run_id = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(controller_clone),
                          "--recipe", "static", "--ref", recipes["static"].versions[1], "--by", "alice",
                          check=True).stdout.strip()
    ctx = open_context(controller_clone, state_dir)
    request, decision = runs.admit(ctx, f"{run_id}.yaml")
    run = runs.claim(ctx, request, decision)
    assert run is not None and run.marker is not None
    runs.execute(ctx, run)  # deployed and asserted; the teardown is still to do
    runs.publish(ctx, run.result, run.request)  # the verdict commit, and then the controller dies:
    run.marker.end(keep=True)  # the kernel frees a dead process's locks; its marker stays
    rewarm.dequeue_rewarm(ctx, "static")  # the promotion's rewarm is test_canonical's business
    app = names.cold_app("static", run_id)
    assert helpers.objects_of_app(app), "the dead run's app should still be there"
    assert helpers.results_in(controller_clone)[run_id]["finished_at"] is None
    serve = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(controller_clone), "--once")
    assert serve.returncode == 0, serve.stderr
    assert helpers.objects_of_app(app) == []
    result = helpers.results_in(controller_clone)[run_id]
    assert (result["outcome"], result["canonical"]["advanced"]) == ("pass", True)  # as committed
    assert result["housekeeping"]["status"] == "recovered" and result["finished_at"]
    # (serve also rewarms the promoted recipe, as this host keeps it warm: not this test's business)
    assert (f"[cold] static@{recipes['static'].versions[1][:7]} pass (run {run_id}); "
            "housekeeping finished by recovery") in helpers.log_subjects(controller_clone)[:3]
    assert helpers.ccci("audit", "--registry", str(controller_clone)).returncode == 0


def test_sigterm_to_a_foreground_run_tears_its_app_down(
        controller_clone: Path, state_dir: Path, recipes: dict[str, RecipeRepo]) -> None:
    run_id = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(controller_clone),
                          "--recipe", "static", "--ref", recipes["static"].versions[1], "--by", "alice",
                          check=True).stdout.strip()
    app = names.cold_app("static", run_id)
    proc = helpers.run_until_deployed(state_dir, controller_clone, run_id, app)
    proc.terminate()
    assert proc.wait(timeout=120) == 130
    assert helpers.objects_of_app(app) == []
    serve = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(controller_clone), "--once")
    assert serve.returncode == 0, serve.stderr
    assert helpers.results_in(controller_clone)[run_id]["outcome"] == "aborted"


def test_image_missing_on_the_host_fails_fast_naming_the_image(
        controller_clone: Path, state_dir: Path, recipes: dict[str, RecipeRepo]) -> None:
    """Real recipes name upstream images; a host that cannot pull must say which one, at once."""
    static = recipes["static"]
    compose = static.read(static.versions[1], "compose.yml").replace(
        "image: ccci-test/busybox:latest", "image: nginx:1.25-alpine")
    head = static.commit_files("pr-image", {"compose.yml": compose}, message="use upstream nginx")
    started = time.monotonic()
    run_id, result = run_request(controller_clone, state_dir, "static", head)
    elapsed = time.monotonic() - started
    assert result["outcome"] == "fail", result
    assert "nginx:1.25-alpine" in result["error"], result["error"]
    assert "not on this host" in result["error"], result["error"]
    assert elapsed < 60, elapsed
    assert helpers.objects_of_app(names.cold_app("static", run_id)) == []
