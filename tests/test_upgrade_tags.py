"""Upgrade runs without the engine: which release tags they start from, who may ask for them,
and a recipe with nothing to upgrade from."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.flows import modes, runs, upgrade
from controller.flows.context import Context, Run, open_context
from controller.flows.forge.reporter import context_of, verdict_comment
from controller.flows.requests import trigger_mode
from controller.registry import recipes, schemas
from controller.registry.documents import Request
from controller.registry.recipes import ReleaseTag, newest_releases
from controller.registry.results import RunResult
from controller.registry.settings import parse_settings
from controller.util.errors import BadInput
from controller.util.paths import StateDir
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import RemoteRegistry, recipe_entry

HEAD = "f" * 40


def commit(n: int) -> str:
    return f"{n:040x}"


def test_release_tags_are_ordered_newest_first_by_their_semver_not_by_text() -> None:
    tags = [("1.9.0+5.1", commit(1)), ("1.10.0+5.2", commit(2)), ("1.2.0+4.0", commit(3)),
            ("2.0.0+6.0.1", commit(4)), ("1.10.1+5.2", commit(5))]
    assert [t.name for t in newest_releases(tags, HEAD, 10)] == [
        "2.0.0+6.0.1", "1.10.1+5.2", "1.10.0+5.2", "1.9.0+5.1", "1.2.0+4.0"]
    assert newest_releases(tags, HEAD, 2) == [ReleaseTag("2.0.0+6.0.1", commit(4)), ReleaseTag("1.10.1+5.2", commit(5))]


def test_only_release_tags_count_and_never_the_heads_own_commit_or_one_commit_twice() -> None:
    tags = [("v1.3.0", commit(1)), ("nightly", commit(2)), ("1.3.0-rc1+5.3", commit(3)),
            ("1.3", commit(4)), ("01.2.0+5", commit(5)),  # not releases
            ("1.2.0+5.3.1", HEAD),  # the head itself: no upgrade to test
            ("1.1.0+5.2", commit(6)), ("1.1.1+5.2.1", commit(6)),  # one commit, two names: the newer
            ("1.0.0", commit(7))]  # a bare X.Y.Z is a release too
    assert [(t.name, t.commit) for t in newest_releases(tags, HEAD, 5)] == [
        ("1.1.1+5.2.1", commit(6)), ("1.0.0", commit(7))]
    assert newest_releases([], HEAD, 2) == [] and newest_releases(tags[:5], HEAD, 2) == []


@pytest.fixture
def chain(tmp_path: Path) -> RecipeRepo:
    return build_recipe("schema-chain", tmp_path / "recipes" / "schema-chain", versions=[1, 2, 3],
                        tags={1: "1.0.0+1", 2: "1.1.0+2", 3: "1.2.0+3"})


def test_tags_come_from_the_heads_history_annotated_or_not_newest_first(
        chain: RecipeRepo, tmp_path: Path) -> None:
    helpers.git(chain.path, "tag", "-a", "-m", "annotated", "1.0.1+1", chain.versions[1])
    head = chain.branch_commit("pr", 4, base=chain.versions[2])  # a PR branched before 1.2.0+3
    settings = parse_settings(f"base_domain: ci.test\nrecipes:\n{recipe_entry('schema-chain', chain.path)}".encode())
    recipe = settings.recipe("schema-chain")
    state = StateDir(tmp_path / "state").ensure()
    recipes.fetch_recipe(state, recipe)
    found = recipes.releases_before(state, recipe, head, 5)
    # 1.2.0+3 is newer than the head's base: upgrading to the head from it would be a downgrade.
    # The annotated tag names its commit (peeled), and outranks the older name of that commit.
    assert [(t.name, t.commit) for t in found] == [("1.1.0+2", chain.versions[2]), ("1.0.1+1", chain.versions[1])]
    # The head of main is 1.2.0+3 itself: it is not its own "from".
    assert [t.name for t in recipes.releases_before(state, recipe, chain.versions[3], 1)] == ["1.1.0+2"]


def test_from_tags_defaults_to_two_and_a_recipe_may_ask_for_more() -> None:
    text = ("base_domain: ci.test\nrecipes:\n  a: {source: /x}\n  b: {source: /y, upgrade_from: 4}\n")
    settings = parse_settings(text.encode())
    assert (settings.upgrade_from_tags("a"), settings.upgrade_from_tags("b")) == (2, 4)
    settings = parse_settings((text + "upgrade: {from_tags: 3}\n").encode())
    assert (settings.upgrade_from_tags("a"), settings.upgrade_from_tags("b")) == (3, 4)
    with pytest.raises(BadInput, match=r"at 'recipes.a.upgrade_from'"):
        parse_settings(b"base_domain: ci.test\nrecipes:\n  a: {source: /x, upgrade_from: 0}\n")


def test_authority_upgrade_unset_is_whoever_cold_admits_and_empty_is_nobody() -> None:
    def allowed(authority: str, user: str) -> bool:
        text = f"base_domain: ci.test\nauthority: {authority}\nrecipes:\n  a: {{source: /x}}\n"
        settings = parse_settings(text.encode())
        request = Request(run_id="20261203T000000-a-abcdef", recipe="a", ref=HEAD, mode="upgrade", requested_by=user)
        return runs.authority_refusal(settings, modes.mode("upgrade").authority or "", request) is None

    assert allowed("{cold: [alice], quick: [bob]}", "alice")
    assert not allowed("{cold: [alice], quick: [bob]}", "bob")
    assert not allowed("{cold: [alice], upgrade: []}", "alice")
    assert allowed("{cold: [alice], upgrade: [carol]}", "carol")
    assert not allowed("{cold: [alice], upgrade: [carol]}", "alice")


def test_upgrade_is_a_requestable_non_gating_mode_with_its_own_label_and_status_context() -> None:
    entry = modes.mode("upgrade")
    assert "upgrade" in modes.REQUESTABLE and "upgrade" in schemas.REQUEST_MODES
    assert (entry.label, entry.gates, entry.authority) == ("upgrade", False, "upgrade")
    assert modes.label_of("upgrade", "fail") == "upgrade" and modes.label_of("upgrade", "rejected") == "reject"
    assert trigger_mode("!testme --upgrade") == "upgrade" and trigger_mode(" !testme --upgrade\n") == "upgrade"
    with pytest.raises(BadInput, match="--upgrade"):
        trigger_mode("!testme --upgrade please")
    settings = parse_settings(b"base_domain: ci.test\nforge: {url: 'https://git.test', "
                              b"token_file: /run/token, webhook_secret_file: /run/secret}\n")
    assert context_of(settings.forge, "upgrade") == "ccci/upgrade"
    result = RunResult(run="r", recipe="a", ref=HEAD, mode="upgrade", requested_mode="upgrade", outcome="fail",
                       started_at="x", gating=False, error="the upgrade from 1.1.0+2: asserts failed",
                       matrix=[{"from": "1.2.0+3", "verdict": "pass", "error": None},
                               {"from": "1.1.0+2", "verdict": "fail", "error": "asserts failed"}])
    text = verdict_comment(settings.forge, result)
    assert "never gates a merge (`ccci/upgrade`)" in text
    assert "| `1.2.0+3` | pass |  |" in text and "| `1.1.0+2` | fail | asserts failed |" in text


def _claimed_upgrade(clone: Path, state_dir: Path, ref: str) -> tuple[Context, Run]:
    """An upgrade request of `static` at `ref`, filed by the CLI and claimed here."""
    run_id = helpers.ccci("--state-dir", str(state_dir), "request", "--registry", str(clone), "--recipe", "static",
                          "--ref", ref, "--mode", "upgrade", "--by", "alice", check=True).stdout.strip()
    ctx = open_context(clone, state_dir)
    request, decision = runs.admit(ctx, f"{run_id}.yaml")
    run = runs.claim(ctx, request, decision)
    assert run is not None
    return ctx, run


def test_a_recipe_without_release_tags_is_rejected_in_one_sentence_and_nothing_deploys(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path) -> None:
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1, 2], tags={})
    git_remote.set_recipes(recipe_entry("static", repo.path, timeout_s=60))
    clone = git_remote.clone("controller")
    ctx, run = _claimed_upgrade(clone, state_dir, repo.versions[2])
    run_id = run.result.run
    runs.run_claimed(ctx, run)
    result = helpers.results_in(clone)[run_id]
    assert result["outcome"] == "rejected" and result["mode"] == "upgrade", result
    assert result["error"].startswith("recipe 'static' has no release tag (X.Y.Z+<upstream>) in the history of")
    assert "no version to upgrade from" in result["error"]
    assert [p["name"] for p in result["phases"]] == ["fetch"]
    assert "matrix" not in result
    assert helpers.log_subjects(clone)[0].startswith(f"[reject] static@{repo.versions[2][:7]} rejected")


def test_the_run_passes_only_if_every_row_passes_and_a_head_failure_outranks_a_broken_release() -> None:
    tags = [ReleaseTag(f"1.{n}.0+1", commit(n)) for n in (3, 2, 1)]

    def verdict(*rows: tuple[str, str | None]) -> tuple[str, str | None, str | None]:
        result = RunResult(run="r", recipe="a", ref=HEAD, mode="upgrade", requested_mode="upgrade",
                           outcome="running", started_at="x")
        result.matrix = [{"from": tag.name, "verdict": v, "cause": c, "error": f"{v} {c}"}
                         for tag, (v, c) in zip(tags, rows, strict=False)]
        upgrade._verdict(result, tags)
        return result.outcome, result.cause, result.error

    assert verdict(("pass", None), ("pass", None), ("pass", None)) == ("pass", None, None)
    assert verdict(("pass", None), ("error", "from-version-broken"), ("fail", "recipe")) == (
        "fail", "recipe", "the upgrade from 1.1.0+1: fail recipe")
    assert verdict(("error", "from-version-broken"), ("pass", None), ("pass", None)) == (
        "error", "from-version-broken", "the upgrade from 1.3.0+1: error from-version-broken")
    outcome, cause, error = verdict(("pass", None))  # a teardown failed: the later rows never ran
    assert (outcome, cause) == ("error", "infra") and error == "2 of 3 rows did not run (a teardown failed)"


def test_a_release_the_host_policy_refuses_costs_its_own_row_and_the_others_still_run(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1], tags={})
    compose = repo.read(repo.versions[1], "compose.yml")
    socket_mount = compose.replace("      - data:/data\n",
                                   "      - data:/data\n      - /var/run/docker.sock:/var/run/docker.sock\n")
    assert socket_mount != compose
    old = repo.commit_files("main", {"compose.yml": socket_mount}, message="1.0.0: mounts the engine's socket")
    helpers.git(repo.path, "tag", "1.0.0+1", old)
    newer = repo.commit_files("main", {"compose.yml": compose}, message="1.1.0: not any more")
    helpers.git(repo.path, "tag", "1.1.0+1", newer)
    head = repo.branch_commit("pr", 2, base=newer)
    git_remote.set_recipes(recipe_entry("static", repo.path, timeout_s=60))
    clone = git_remote.clone("controller")
    deployed: list[str] = []

    def row_that_passes(_ctx: object, _result: RunResult, tag: ReleaseTag, *_deps: object) -> dict[str, object]:
        deployed.append(tag.name)  # the swarm's rows are test_upgrade_matrix's; here: which rows ran
        return {"from": tag.name, "from_commit": tag.commit, "verdict": "pass", "cause": None, "error": None}

    monkeypatch.setattr(upgrade, "_run_row", row_that_passes)
    result = runs.execute(*_claimed_upgrade(clone, state_dir, head))
    assert deployed == ["1.1.0+1"]  # the refused release never deploys
    rows = {row["from"]: row for row in result.matrix or []}
    assert list(rows) == ["1.1.0+1", "1.0.0+1"]
    assert (rows["1.0.0+1"]["verdict"], rows["1.0.0+1"]["cause"]) == ("error", "policy")
    assert str(rows["1.0.0+1"]["error"]).startswith("1.0.0+1 is not deployed here: ")
    assert "docker.sock" in str(rows["1.0.0+1"]["error"])
    assert (result.outcome, result.cause) == ("error", "policy"), result.error
    assert result.policy is not None and result.policy["asks"] == []  # the head's own asks: none

    # A head that asks for what the host refuses still rejects the whole run, before any row.
    deployed.clear()
    bad_head = repo.commit_files("pr-bad", {"compose.yml": socket_mount}, base=newer, message="mount it again")
    result = runs.execute(*_claimed_upgrade(clone, state_dir, bad_head))
    assert (result.outcome, result.cause, result.matrix, deployed) == ("rejected", "policy", None, [])
