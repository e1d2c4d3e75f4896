"""Canonical advancement and `ccci audit` on real git and real cold runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import STATIC_OPTIONS, RemoteRegistry, recipe_entry
from tests.test_cold import run_request

pytestmark = pytest.mark.docker


@pytest.fixture
def static_repo(tmp_path: Path) -> RecipeRepo:
    return build_recipe("static", tmp_path / "recipes" / "static", versions=[1])


@pytest.fixture
def clone(git_remote: RemoteRegistry, static_repo: RecipeRepo, docker_host: str) -> Path:
    git_remote.set_recipes(recipe_entry("static", static_repo.path, **STATIC_OPTIONS))
    return git_remote.clone("controller")


def known_good(clone: Path) -> str | None:
    path = clone / "canonicals" / "static.yaml"
    return helpers.read_yaml(path)["known_good"] if path.exists() else None


def audit(clone: Path) -> tuple[int, str]:
    proc = helpers.ccci("audit", "--registry", str(clone))
    return proc.returncode, proc.stdout + proc.stderr


def test_canonical_seeds_advances_and_ignores_unmerged_pr_heads(
        clone: Path, state_dir: Path, static_repo: RecipeRepo, git_remote: RemoteRegistry) -> None:
    v1 = static_repo.versions[1]
    _run, first = run_request(clone, state_dir, "static", v1)
    assert first["outcome"] == "pass"
    assert first["canonical"] == {"before": None, "after": v1, "advanced": True}
    assert known_good(clone) == v1
    assert helpers.log_subjects(clone)[1].endswith("canonical advanced")  # [0]: its housekeeping

    # A PR head that is never merged: green, but known-good stays.
    pr_head = static_repo.branch_commit("pr-7", 2)
    _run, pr = run_request(clone, state_dir, "static", pr_head)
    assert pr["outcome"] == "pass"
    assert pr["canonical"]["advanced"] is False
    assert pr["canonical"]["reason"] == "not promoted: it is not on main (a PR head that was not merged)"
    assert known_good(clone) == v1

    # The same change merged to main: green, descends from known-good, so it advances.
    v2 = static_repo.commit_version(2)
    _run, merged = run_request(clone, state_dir, "static", v2)
    assert merged["outcome"] == "pass"
    assert merged["canonical"] == {"before": v1, "after": v2, "advanced": True}
    assert known_good(clone) == v2

    # An older main commit, green again, never moves known-good backwards.
    _run, older = run_request(clone, state_dir, "static", v1)
    assert older["outcome"] == "pass" and older["canonical"]["advanced"] is False
    assert older["canonical"]["reason"] == f"not promoted: it does not descend from the known-good {v2[:12]}"
    assert known_good(clone) == v2

    code, text = audit(clone)
    assert code == 0, text
    assert "2 canonical changes" in text
    status = __import__("json").loads(helpers.ccci("--state-dir", str(state_dir), "status", "--registry",
                                                   str(clone), "--json", check=True).stdout)
    row = next(r for r in status["recipes"] if r["recipe"] == "static")
    assert (row["known_good"], row["last_mode"], row["last_outcome"]) == (v2, "cold", "pass")
    assert status["disk"] and status["disk"][0]["path"] == str(state_dir)
    assert status["disk"][0]["low"] is (status["disk"][0]["free_gib"] < status["disk_min_free_gb"])
    table = helpers.ccci("--state-dir", str(state_dir), "status", "--registry", str(clone), check=True).stdout
    assert "static" in table and v2[:12] in table
    assert f"disk: {state_dir}" in table.replace("\n", "")

    # A human edits the canonical by hand: audit fails, naming that commit.
    git_remote.edit({"canonicals/static.yaml": (clone / "canonicals" / "static.yaml").read_text()
                     .replace(v2, pr_head)}, "pin static to the PR head")
    helpers.git(clone, "pull", "-q", "--rebase")
    bad_commit = helpers.git(clone, "rev-parse", "HEAD")
    code, text = audit(clone)
    assert code == 1, text
    assert f"commit {bad_commit[:12]}: canonicals/static.yaml:" in text
    assert "not the controller" in text


def test_audit_catches_a_forged_controller_commit(
        clone: Path, state_dir: Path, static_repo: RecipeRepo, git_remote: RemoteRegistry) -> None:
    """Same author identity as the controller, but no green cold result of that commit."""
    v1 = static_repo.versions[1]
    _run, first = run_request(clone, state_dir, "static", v1)
    assert first["outcome"] == "pass"
    forged = (clone / "canonicals" / "static.yaml").read_text().replace(v1, "d" * 40)
    (clone / "canonicals" / "static.yaml").write_text(forged)
    as_controller = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                     for what, value in (("NAME", "ccci-test"), ("EMAIL", "ccci@test.invalid"))}
    helpers.git(clone, "commit", "-qam", f"[cold] static@ddddddd pass (run {first['run']})",
                env=as_controller)
    code, text = audit(clone)
    assert code == 1, text
    assert "known_good dddddddddddd is not the commit the message names" in text or "its result tested" in text


def test_a_tracked_branch_the_recipe_lacks_is_named_in_the_result(
        git_remote: RemoteRegistry, static_repo: RecipeRepo, state_dir: Path, docker_host: str) -> None:
    """Many recipes' main line is `master`; a green run says why it did not promote."""
    git_remote.set_recipes(recipe_entry("static", static_repo.path, **STATIC_OPTIONS, track="trunk"))
    clone = git_remote.clone("controller")
    _run, result = run_request(clone, state_dir, "static", static_repo.versions[1])
    assert result["outcome"] == "pass" and result["canonical"]["advanced"] is False
    assert result["canonical"]["reason"] == (
        "not promoted: the recipe has no branch 'trunk': set recipes.static.track in ccci.yaml to its main line")
    assert known_good(clone) is None


def test_ccci_run_of_a_promoting_cold_leaves_a_rewarmed_snapshot_as_serve_would(
        clone: Path, state_dir: Path, static_repo: RecipeRepo) -> None:
    v1 = static_repo.versions[1]
    run_id = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(clone), "--recipe",
                          "static", "--ref", v1, "--by", "alice", check=True).stdout.strip()
    proc = helpers.ccci("--state-dir", str(state_dir), "run", "--registry", str(clone), run_id)
    assert proc.returncode == 0, proc.stderr
    results = helpers.results_in(clone)
    assert results[run_id]["canonical"]["advanced"] is True
    rewarms = [r for r in results.values() if r["mode"] == "rewarm"]
    assert len(rewarms) == 1 and rewarms[0]["outcome"] == "pass" and rewarms[0]["ref"] == v1, rewarms
    index = helpers.read_yaml(clone / "snapshots-index" / helpers.HOST / "warm-static.yaml")
    assert index["commit"] == v1 and index["taken_by_run"] == rewarms[0]["run"]
    assert (state_dir / "snapshots" / "warm-static" / "last-known-good").is_symlink()
    assert not list((state_dir / "queue").glob("rewarm-*"))  # done, not left for serve
    subjects = helpers.log_subjects(clone)
    assert subjects[0].startswith(f"[rewarm] static@{v1[:7]} pass") and "snapshot replaced" in subjects[0]
    assert subjects[1].startswith(f"[cold] static@{v1[:7]} pass (run {run_id})")
    assert helpers.git(clone, "status", "--porcelain") == ""
