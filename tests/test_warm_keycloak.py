"""`ccci warm reconcile`: the live-warm Keycloak on the real swarm, moved along its recipe's
line behind the safety gate (major bumps, migration notes) and the health gate (snapshot,
deploy, roll back with the data intact)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.flows import cleanup
from controller.flows.context import Context
from controller.flows.keycloak import GateVerdict, safety_gate
from controller.flows.keycloak.gates import notes_in_range, parse_version, read_release_notes
from controller.flows.keycloak.reconcile import check_infra_app, running_commit
from controller.registry.store import Registry
from controller.runtime import probe, stack
from controller.sso.client import KeycloakAdminClient
from controller.util.errors import BadInput
from controller.util.paths import StateDir
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import RemoteRegistry, recipe_entry
from tests.test_sso import KEYCLOAK_OPTIONS, external_keycloak, settings_text

# -- the safety gate (pure) --------------------------------------------------------------------------


def test_safety_gate_holds_a_major_version_bump() -> None:
    verdict = safety_gate(parse_version("1.1.0"), parse_version("2.0.0"), {})
    assert verdict.hold and "major version bump (1.1.0 → 2.0.0)" in verdict.reason
    assert safety_gate(parse_version("1.1.0"), parse_version("1.2.0+26.0.5"), {}) == GateVerdict(
        False, "1.1.0 → 1.2.0")


def test_safety_gate_holds_release_notes_that_flag_a_manual_migration() -> None:
    for text in ("Run the MANUAL MIGRATION first.", "BREAKING: the config moved", "manual-migration"):
        verdict = safety_gate((1, 1, 0), (1, 2, 0), {"1.2.0": f"Faster.\n{text}\n"})
        assert verdict.hold and "release/1.2.0" in verdict.reason, text
    assert not safety_gate((1, 1, 0), (1, 2, 0), {"1.2.0": "Faster start-up.\n"}).hold


def test_release_notes_read_are_those_past_the_deployed_version(tmp_path: Path) -> None:
    names = ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "next", "README"]
    assert notes_in_range(names, (1, 0, 0), (1, 2, 0)) == ["1.1.0", "1.2.0", "next"]
    assert notes_in_range(names, None, (1, 2, 0)) == ["1.2.0", "next"]
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "1.0.0").write_text("BREAKING long ago\n")
    (tmp_path / "release" / "1.1.0").write_text("fine\n")
    notes = read_release_notes(tmp_path, (1, 0, 0), (1, 1, 0))
    assert notes == {"1.1.0": "fine\n"}
    assert not safety_gate((1, 0, 0), (1, 1, 0), notes).hold


def test_live_keycloak_may_not_take_a_name_from_the_canonicals_name_space() -> None:
    with pytest.raises(BadInput, match="warm-\\*"):
        check_infra_app("warm-keycloak")
    assert check_infra_app("infra-keycloak") == "infra-keycloak"


# -- reconcile on the swarm ---------------------------------------------------------------------------

@dataclass
class ManagedBed:
    clone: Path
    state: Path
    recipe: RecipeRepo
    app: str
    port: int
    password: str

    def reconcile(self, *extra: str) -> tuple[int, str]:
        proc = helpers.ccci("--state-dir", str(self.state), "warm", "reconcile", "--registry",
                            str(self.clone), *extra)
        return proc.returncode, proc.stdout + proc.stderr

    def admin(self) -> KeycloakAdminClient:
        return KeycloakAdminClient(f"http://127.0.0.1:{self.port}", "admin", self.password)

    def running_commit(self) -> str | None:
        return running_commit(self.app)

    def commit(self, version: int, tag: str) -> str:
        sha = self.recipe.commit_version(version, tag=False)
        helpers.git(self.recipe.path, "tag", tag)
        return sha

    def alert(self) -> dict[str, object] | None:
        path = self.state / "alerts" / f"warm-infra-{self.app}.json"
        return json.loads(path.read_text()) if path.is_file() else None


@pytest.fixture
def managed(git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path,
            docker_host: str) -> Iterator[ManagedBed]:
    """A registry whose warm Keycloak is managed: recipe `keycloak` at 1.0.0, on a free port,
    under an app name of its own; removed with its volume afterwards."""
    recipe = build_recipe("keycloak", tmp_path / "recipes" / "keycloak", versions=[1])
    app = f"infra-keycloak-t{secrets.token_hex(3)}"
    port = probe.free_port()
    password = secrets.token_urlsafe(18)
    secret_file = tmp_path / "kc-admin"
    secret_file.write_text(password)
    secret_file.chmod(0o600)
    git_remote.edit({"ccci.yaml": settings_text(
        keycloak=f"{{mode: managed, recipe: keycloak, app: {app}, port: {port}, "
                 f"admin_secret_file: '{secret_file}'}}",
        recipes=recipe_entry("keycloak", recipe.path, **KEYCLOAK_OPTIONS))}, "settings")
    bed = ManagedBed(git_remote.clone("controller"), state_dir, recipe, app, port, password)
    try:
        yield bed
    finally:
        stack.undeploy(app, remove_volumes=True)


@pytest.mark.docker
def test_reconcile_applies_a_healthy_upgrade_and_rolls_back_a_broken_one_with_data_intact(
        managed: ManagedBed) -> None:
    code, out = managed.reconcile()
    assert code == 0 and out.startswith("deployed:"), out
    v1 = managed.recipe.versions[1]
    assert managed.running_commit() == v1
    labels = stack.labelled_apps()[managed.app]
    assert labels["mode"] == "infra" and not labels["run"], labels
    # The cold clean-up and the leak check leave the live infra alone.
    ctx = Context.open(Registry(managed.clone), StateDir(managed.state))
    assert managed.app not in cleanup.stale_cold_apps(ctx.state)
    leaks = helpers.ccci("--state-dir", str(managed.state), "leaks")
    assert managed.app not in leaks.stdout + leaks.stderr

    v2 = managed.commit(2, "1.1.0")
    code, out = managed.reconcile()
    assert code == 0 and out.startswith("upgraded:") and "1.0.0" in out and "1.1.0" in out, out
    assert managed.running_commit() == v2
    managed.admin().create_realm({"realm": "marker", "enabled": True, "displayName": "data from 1.1.0"})

    managed.commit(3, "1.2.0")  # wipes the database, then does not start
    code, out = managed.reconcile()
    assert code == 1 and "rolled-back:" in out and "restored from the snapshot" in out, out
    # Version 3 wiped the database before failing: the restore had files to put back.
    put_back = re.search(r"\((\d+) files put back\)", out)
    assert put_back and int(put_back.group(1)) > 0, out
    assert managed.running_commit() == v2
    assert managed.admin().realm_exists("marker"), "the rollback lost the data"
    alert = managed.alert()
    assert alert and alert["outcome"] == "rolled-back", alert
    state = json.loads((managed.state / "infra" / f"{managed.app}.json").read_text())
    assert (state["commit"], state["version"]) == (v2, "1.1.0")


@pytest.mark.docker
def test_reconcile_holds_a_major_bump_with_an_alert_and_deploys_nothing_until_approved(
        managed: ManagedBed) -> None:
    v2 = managed.commit(2, "1.1.0")
    code, out = managed.reconcile()
    assert code == 0 and out.startswith("deployed:") and "1.1.0" in out, out
    before = stack.inspect_app(managed.app)
    tasks_before = {t.id for s in before.services for t in s.tasks}

    v4 = managed.commit(4, "2.0.0")
    code, out = managed.reconcile()
    assert code == 1 and "held:" in out and "major version bump (1.1.0 → 2.0.0)" in out, out
    assert f"--approve {v4}" in out
    alert = managed.alert()
    assert alert and alert["outcome"] == "held", alert
    after = stack.inspect_app(managed.app)
    assert {t.id for s in after.services for t in s.tasks} == tasks_before, "something was redeployed"
    assert managed.running_commit() == v2
    assert not (managed.state / "snapshots" / managed.app).exists(), "held, yet a snapshot was taken"

    # After the manual steps, an operator approves exactly that commit; the health gate still runs.
    code, out = managed.reconcile("--approve", v4[:12])
    assert code == 0 and out.startswith("upgraded:") and "2.0.0" in out, out
    assert managed.running_commit() == v4
    assert managed.alert() is None


@pytest.mark.keycloak
def test_reconcile_of_an_external_keycloak_checks_its_health_only(
        git_remote: RemoteRegistry, state_dir: Path, keycloak_admin: dict[str, str]) -> None:
    cases = ((keycloak_admin["url"], 0, "healthy:"), ("http://127.0.0.1:1", 1, "unhealthy:"))
    for url, code, outcome in cases:
        git_remote.edit({"ccci.yaml": settings_text(
            keycloak=external_keycloak(url, keycloak_admin["secret_file"]), recipes="  {}\n")}, url)
        clone = git_remote.clone(f"controller-{code}")
        proc = helpers.ccci("--state-dir", str(state_dir), "warm", "reconcile", "--registry", str(clone))
        lines = (proc.stdout + proc.stderr).splitlines()
        assert (proc.returncode, any(line.startswith(outcome) for line in lines)) == (code, True), proc
    assert (state_dir / "alerts" / "warm-keycloak-down.json").is_file()
