"""The upgrade matrix on the real swarm: a PR head tested as an upgrade from each of the
recipe's latest release tags, each from the data that tag initialised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.runtime import stack
from controller.util import names
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import STATIC_OPTIONS, RemoteRegistry, recipe_entry

pytestmark = pytest.mark.docker

# Co-op Cloud's tag form: the recipe's version + the upstream's. The fixture's schema moves
# 1 → 2 → 3; the PR head (version 4) migrates 3 → 4 but forgot the steps before.
CHAIN_TAGS = {1: "1.0.0+1", 2: "1.1.0+2", 3: "1.2.0+3"}


@pytest.fixture
def chain(tmp_path: Path) -> RecipeRepo:
    return build_recipe("schema-chain", tmp_path / "recipes" / "schema-chain", versions=[1, 2, 3],
                        tags=CHAIN_TAGS)


def test_head_that_upgrades_from_the_last_tag_but_not_the_one_before_is_reported_row_by_row(
        git_remote: RemoteRegistry, chain: RecipeRepo, docker_host: str, state_dir: Path) -> None:
    head = chain.branch_commit("pr-schema-4", 4)
    # A canonical the run must leave as it is (an upgrade run never promotes).
    canonical = (f"recipe: schema-chain\nknown_good: {chain.versions[3]}\n"
                 "promoted_by_run: 20261201T000000-schema-chain-abcdef\npromoted_at: 2026-12-01T00:00:00Z\n")
    git_remote.edit({"canonicals/schema-chain.yaml": canonical}, "a known-good")
    git_remote.set_recipes(recipe_entry("schema-chain", chain.path, **STATIC_OPTIONS))
    clone = git_remote.clone("controller")

    run_id = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(clone), "--recipe",
                          "schema-chain", "--ref", head, "--mode", "upgrade", "--by", "alice",
                          check=True).stdout.strip()
    proc = helpers.ccci("--state-dir", str(state_dir), "run", "--registry", str(clone), run_id, "--no-rewarm")
    result = helpers.results_in(clone)[run_id]

    assert (result["mode"], result["requested_mode"], result["gating"]) == ("upgrade", "upgrade", False), proc.stderr
    rows = result["matrix"]
    assert [(r["from"], r["from_commit"], r["verdict"]) for r in rows] == [
        ("1.2.0+3", chain.versions[3], "pass"), ("1.1.0+2", chain.versions[2], "fail")], result
    assert rows[1]["cause"] == "recipe" and "custom:tests/ccci-assert (upgrade)" in rows[1]["failed_asserts"]
    assert [p["name"] for p in rows[0]["phases"]] == [
        "deploy (from)", "converge (from)", "asserts (from)", "deploy (upgrade)", "converge (upgrade)",
        "asserts (upgrade)", "teardown"]
    assert all(r["seconds"] > 0 and r["teardown"] == "done" for r in rows)
    assert result["outcome"] == "fail" and result["cause"] == "recipe"
    assert "1.1.0+2" in result["error"]

    assert (clone / "canonicals" / "schema-chain.yaml").read_text() == canonical
    assert result["canonical"]["advanced"] is False
    assert helpers.log_subjects(clone)[1].startswith(f"[upgrade] schema-chain@{head[:7]} fail (run {run_id})")
    app = names.cold_app("schema-chain", run_id)
    assert helpers.objects_of_app(app) == []
    assert not [a for a, facts in stack.labelled_apps().items() if facts["run"] == run_id]

    status = json.loads(helpers.ccci("--state-dir", str(state_dir), "status", "--registry", str(clone), "--json",
                                     check=True).stdout)
    row, = status["recipes"]
    assert (row["last_upgrade"]["run"], row["last_upgrade"]["outcome"]) == (run_id, "fail")
    assert row["last_cold"] is None and row["known_good"] == chain.versions[3]
    table = helpers.ccci("--state-dir", str(state_dir), "status", "--registry", str(clone), check=True,
                         env={"COLUMNS": "200"}).stdout
    assert "last upgrade" in table and f"fail @{head[:7]}" in table


def test_a_killed_upgrade_run_is_aborted_and_its_throwaway_app_removed_at_the_next_start(
        git_remote: RemoteRegistry, chain: RecipeRepo, docker_host: str, state_dir: Path) -> None:
    head = chain.branch_commit("pr-schema-4", 4)
    git_remote.set_recipes(recipe_entry("schema-chain", chain.path, **STATIC_OPTIONS))
    clone = git_remote.clone("controller")
    run_id = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(clone), "--recipe",
                          "schema-chain", "--ref", head, "--mode", "upgrade", "--by", "alice",
                          check=True).stdout.strip()
    app = names.cold_app("schema-chain", run_id)
    helpers.kill_mid_run_then_serve(state_dir, clone, run_id, app)
    helpers.git(clone, "pull", "-q")
    result = helpers.results_in(clone)[run_id]
    assert (result["mode"], result["outcome"]) == ("upgrade", "aborted"), result
