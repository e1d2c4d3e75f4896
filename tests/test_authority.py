"""Who may ask for a run: names and '*' admit any request that names them; forge rules admit
only requests the forge intake filed. Fast: real git remotes, no Docker, no forge."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.flows import runs
from controller.flows.context import Context
from controller.registry.documents import ForgeOrigin, Request
from controller.registry.store import Registry
from controller.util.errors import BadInput
from controller.util.paths import StateDir
from tests import helpers
from tests.helpers import HEX_A, RemoteRegistry

RUN = "20261201T090000-static-00b0b0"
FORGE = """\
forge:
  url: https://git.test
  token_file: /run/credentials/ccci/forge-token
"""


def settings(cold: str, *, forge: bool = True) -> str:
    return (f"base_domain: ci.test\n"
            f"identity: {{name: ccci-test, email: ccci@test.invalid}}\n"
            f"authority:\n  cold: {cold}\n  quick: []\n"
            + (FORGE if forge else "")
            + "recipes:\n  static: {source: /nonexistent/static}\n")


def open_ctx(git_remote: RemoteRegistry, tmp_path: Path, text: str, clone: str = "controller") -> Context:
    git_remote.edit({"ccci.yaml": text}, "settings")
    return Context.open(Registry(git_remote.clone(clone)), StateDir(tmp_path / "state"))


def request(by: str, allowed_by: str | None = None, *, from_forge: bool = False) -> Request:
    origin = ForgeOrigin("coop/static", 7, 4242, allowed_by=allowed_by) if from_forge or allowed_by else None
    return Request(run_id=RUN, recipe="static", ref=HEX_A, mode="cold", requested_by=by, pr=7, forge=origin)


def test_a_plain_request_from_a_user_only_a_forge_rule_admits_is_rejected_naming_the_field(
        git_remote: RemoteRegistry, tmp_path: Path) -> None:
    ctx = open_ctx(git_remote, tmp_path, settings("['org:coop', alice]"))
    with pytest.raises(BadInput) as caught:
        runs.decide(ctx, request("bob"))
    assert caught.value.message == (
        f"requests/{RUN}.yaml: at 'forge.allowed_by': 'bob' is not named in authority.cold in ccci.yaml, "
        "and its forge rules (org:coop) apply only to requests the forge intake filed, which carry the "
        "rule that admitted the commenter as forge.allowed_by")
    # A request the intake filed for a commenter it admitted by name carries no rule either.
    with pytest.raises(BadInput, match=r"at 'forge\.allowed_by': 'bob' is not named in authority\.cold"):
        runs.decide(ctx, request("bob", from_forge=True))


def test_the_rejection_of_a_plain_request_is_committed_as_its_result(
        git_remote: RemoteRegistry, tmp_path: Path) -> None:
    ctx = open_ctx(git_remote, tmp_path, settings("['team:coop/maintainers']"))
    git_remote.edit({f"requests/{RUN}.yaml": helpers.request_doc("static", by="mallory")}, "a plain request")
    ctx.registry.sync()
    with pytest.raises(runs.Rejected) as caught:
        runs.admit(ctx, f"{RUN}.yaml")
    assert caught.value.committed
    result = helpers.results_in(ctx.registry.root)[RUN]
    assert result["outcome"] == "rejected" and result["mode"] is None
    assert "authority.cold" in result["error"] and "forge intake filed" in result["error"]
    assert helpers.log_subjects(ctx.registry.root)[0].startswith(f"[reject] static@aaaaaaa rejected (run {RUN})")


def test_names_and_star_admit_any_request_forge_rules_only_the_intakes_while_they_stay(
        git_remote: RemoteRegistry, tmp_path: Path) -> None:
    ctx = open_ctx(git_remote, tmp_path, settings("['org:coop', collaborator, alice]"))
    assert runs.decide(ctx, request("alice")) == runs.Decision("cold")  # named: no forge needed
    assert runs.decide(ctx, request("carol", "org:coop")) == runs.Decision("cold")
    assert runs.decide(ctx, request("carol", "collaborator")) == runs.Decision("cold")
    with pytest.raises(BadInput, match=r"at 'forge\.allowed_by': 'carol' was admitted on the forge by "
                                       r"'team:coop/ops', which authority\.cold in ccci\.yaml does not hold"):
        runs.decide(ctx, request("carol", "team:coop/ops"))
    # A name in allowed_by is no forge rule: it cannot lend its place on the list to another user.
    with pytest.raises(BadInput, match=r"by 'alice', which authority\.cold in ccci\.yaml does not hold"):
        runs.decide(ctx, request("carol", "alice"))

    anyone = open_ctx(git_remote, tmp_path, settings("['*']"), clone="anyone")
    assert runs.decide(anyone, request("whoever")) == runs.Decision("cold")


def test_forge_rules_admit_nobody_when_ccci_yaml_configures_no_forge(
        git_remote: RemoteRegistry, tmp_path: Path) -> None:
    ctx = open_ctx(git_remote, tmp_path, settings("['org:coop']", forge=False))
    with pytest.raises(BadInput, match=r"at 'forge\.allowed_by': .* configures no forge \(forge\.url\)"):
        runs.decide(ctx, request("carol", "org:coop"))
    with pytest.raises(BadInput, match=r"at 'requested_by': 'carol' is not named in authority\.cold .*"
                                       r"\(and ccci\.yaml configures no forge\)$"):
        runs.decide(ctx, request("carol"))


def test_without_forge_rules_the_rejection_names_requested_by(
        git_remote: RemoteRegistry, tmp_path: Path) -> None:
    ctx = open_ctx(git_remote, tmp_path, settings("[alice]"))
    with pytest.raises(BadInput) as caught:
        runs.decide(ctx, request("bob"))
    assert caught.value.message == (
        f"requests/{RUN}.yaml: at 'requested_by': 'bob' is not allowed by authority.cold in ccci.yaml")
