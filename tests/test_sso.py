"""Per-run SSO realms against the test bed's real Keycloak and swarm: one realm per run, gone
after it; isolation between realms; the reaper; the co-deployed fallback; no leaked password."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.flows import keycloak
from controller.flows.context import Context
from controller.registry.results import RunResult
from controller.registry.store import Registry
from controller.sso.client import KeycloakAdminClient, password_grant
from controller.sso.naming import OWNER_ATTRIBUTE, RUN_ATTRIBUTE, RealmFacts, realm_name, stale_realms
from controller.sso.realms import new_realm_request, realm_representation
from controller.util import inflight, names
from controller.util.errors import BadInput, ExternalError
from controller.util.paths import StateDir
from controller.util.timeutil import new_run_id, now_iso
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import RemoteRegistry, recipe_entry, wait_for

SSO_APP_OPTIONS = {"sso": "keycloak", "timeout_s": 300, "stability_s": 1}
KEYCLOAK_OPTIONS = {"timeout_s": 300, "stability_s": 1,
                    "http": "{service: app, port: 8080, path: /realms/master}"}
DOWN_URL = "http://127.0.0.1:1"  # nothing listens here: the warm Keycloak is "down"


# -- helpers shared with test_warm_keycloak -------------------------------------------------------

def settings_text(*, keycloak: str, recipes: str, max_parallel_cold: int = 2) -> str:
    head = helpers.SETTINGS_HEAD.replace("max_parallel_cold: 2", f"max_parallel_cold: {max_parallel_cold}")
    return head + f"warm:\n  keycloak: {keycloak}\n" + "recipes:\n" + recipes


def external_keycloak(url: str, secret_file: str) -> str:
    return f"{{mode: external, url: '{url}', admin_secret_file: '{secret_file}'}}"


def admin_client(keycloak_admin: dict[str, str]) -> KeycloakAdminClient:
    password = Path(keycloak_admin["secret_file"]).read_text().strip()
    return KeycloakAdminClient(keycloak_admin["url"], keycloak_admin["user"], password)


def realm_names(client: KeycloakAdminClient) -> set[str]:
    return {r.name for r in client.realms()}


def rest(keycloak_admin: dict[str, str], method: str, path: str, body: object | None = None) -> int:
    """A raw admin REST call, for realms the controller's client must never delete."""
    password = Path(keycloak_admin["secret_file"]).read_text().strip()
    form = urllib.parse.urlencode({"grant_type": "password", "client_id": "admin-cli",
                                   "username": keycloak_admin["user"], "password": password}).encode()
    with urllib.request.urlopen(f"{keycloak_admin['url']}/realms/master/protocol/openid-connect/token",
                                data=form, timeout=30) as response:
        token = json.loads(response.read())["access_token"]
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{keycloak_admin['url']}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def places_holding(secret: str, clone: Path, state: Path, outputs: dict[str, str]) -> list[str]:
    """Where `secret` shows: registry files, the registry's whole git history, the state
    dir's logs, captured output. Returns names only, so a failure never prints the secret."""
    found = [name for name, text in outputs.items() if secret in text]
    for path in clone.rglob("*"):
        in_git = ".git" in path.relative_to(clone).parts  # the history is searched below
        if path.is_file() and not in_git and secret.encode() in path.read_bytes():
            found.append(str(path))
    history = helpers.git(clone, "log", "--all", "-p", "--format=%H %s%n%b")
    if secret in history:
        found.append("registry git history")
    for path in (state / "logs").rglob("*"):
        if path.is_file() and secret.encode() in path.read_bytes():
            found.append(str(path))
    return found


@dataclass
class SsoBed:
    remote: RemoteRegistry
    clone: Path
    state: Path
    sso_app: RecipeRepo
    keycloak: RecipeRepo

    def request(self, recipe: str = "sso-app") -> str:
        repo = self.sso_app if recipe == "sso-app" else self.keycloak
        return helpers.ccci("--state-dir", str(self.state), "request", "--registry", str(self.clone),
                            "--recipe", recipe, "--ref", repo.versions[1], "--by", "alice",
                            check=True).stdout.strip()


def make_bed(remote: RemoteRegistry, tmp_path: Path, state: Path, keycloak: str,
             max_parallel_cold: int = 2) -> SsoBed:
    sso_app = build_recipe("sso-app", tmp_path / "recipes" / "sso-app")
    kc = build_recipe("keycloak", tmp_path / "recipes" / "keycloak", versions=[1])
    remote.edit({"ccci.yaml": settings_text(
        keycloak=keycloak, max_parallel_cold=max_parallel_cold,
        recipes=recipe_entry("sso-app", sso_app.path, **SSO_APP_OPTIONS)
        + recipe_entry("keycloak", kc.path, **KEYCLOAK_OPTIONS))}, "settings")
    return SsoBed(remote, remote.clone("controller"), state, sso_app, kc)


@pytest.fixture
def bed(git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, keycloak_admin: dict[str, str],
        docker_host: str) -> SsoBed:
    """A registry whose warm Keycloak is the test bed's (external mode)."""
    return make_bed(git_remote, tmp_path, state_dir,
                    external_keycloak(keycloak_admin["url"], keycloak_admin["secret_file"]))


@pytest.fixture
def ctx(git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path,
        keycloak_admin: dict[str, str]) -> Context:
    """A controller context on the test bed's Keycloak, for realm-level tests (no Docker)."""
    git_remote.edit({"ccci.yaml": settings_text(
        keycloak=external_keycloak(keycloak_admin["url"], keycloak_admin["secret_file"]),
        recipes="  iso: {source: /nonexistent, sso: keycloak}\n")}, "settings")
    return Context.open(Registry(git_remote.clone("controller")), StateDir(state_dir))


def blank_result(run_id: str) -> RunResult:
    return RunResult(run=run_id, recipe="iso", ref=None, mode="cold", requested_mode="cold",
                     outcome="running", started_at=now_iso())


# -- pure rules -------------------------------------------------------------------------------------

def test_realm_name_is_the_recipe_and_the_six_hex_ending_the_run_id() -> None:
    assert realm_name("notes", "20261129T120000-notes-3fa2b1") == "notes-3fa2b1"
    with pytest.raises(BadInput):
        realm_name("notes", "not-a-run-id")


def test_deleting_master_or_a_name_outside_the_scheme_is_refused_before_any_request() -> None:
    # Nothing listens at DOWN_URL: the refusal must come before any request is made.
    client = KeycloakAdminClient(DOWN_URL, "admin", "irrelevant-password")
    for name in ("master", "customer-abc", "notes-ABCDEF", "notes-3fa2b", "-3fa2b1"):
        with pytest.raises(BadInput, match="refusing to delete realm"):
            client.delete_realm(name)


def test_reaper_rule_picks_only_this_controllers_realms_whose_run_is_gone() -> None:
    me, other = "owner-me", "owner-other"
    dead, live = "20261129T120000-notes-aaaaaa", "20261129T120000-notes-bbbbbb"
    realms = [
        RealmFacts("notes-aaaaaa", dead, me),  # stale: ours, run gone
        RealmFacts("notes-bbbbbb", live, me),  # run in flight
        RealmFacts("notes-cccccc", None, me),  # no run mark: not ours
        RealmFacts("notes-dddddd", "20261129T120000-notes-dddddd", other),  # another controller's
        RealmFacts("notes-eeeeee", dead, me),  # run mark names another realm: not ours
        RealmFacts("master", dead, me),
        RealmFacts("customer-abc", None, None),
    ]
    assert stale_realms(realms, {live}, me) == ["notes-aaaaaa"]
    # An in-flight run named by recipe+hex protects its realm even without the stored mark.
    assert stale_realms([RealmFacts("notes-aaaaaa", dead, me)], {dead}, me) == []


def test_realm_document_has_two_oidc_clients_a_user_and_the_run_marks() -> None:
    req = new_realm_request("notes", "20261129T120000-notes-3fa2b1", owner="me",
                            frontend_url="http://127.0.0.1:8180/", domain="notes-3fa2b1.ci.test",
                            redirect_uris=("https://notes-3fa2b1.ci.test/*",))
    doc = realm_representation(req)
    assert doc["realm"] == "notes-3fa2b1"
    assert doc["attributes"][RUN_ATTRIBUTE] == "20261129T120000-notes-3fa2b1"
    assert doc["attributes"][OWNER_ATTRIBUTE] == "me"
    assert req.issuer == "http://127.0.0.1:8180/realms/notes-3fa2b1"
    confidential, public = doc["clients"]
    assert (confidential["publicClient"], confidential["secret"]) == (False, req.client_secret)
    assert public["publicClient"] is True and "secret" not in public
    assert all(c["directAccessGrantsEnabled"] for c in doc["clients"])
    assert doc["users"][0]["credentials"][0]["value"] == req.password
    other = new_realm_request("notes", "20261129T120000-notes-3fa2b1", owner="me", frontend_url="x",
                              domain="d", redirect_uris=())
    assert (other.password, other.client_secret) != (req.password, req.client_secret)


# -- the real Keycloak ----------------------------------------------------------------------------

@pytest.mark.keycloak
def test_a_user_of_one_realm_cannot_get_a_token_from_another(ctx: Context) -> None:
    run_a, run_b = new_run_id("iso"), new_run_id("iso")
    grant_a = keycloak.prepare_realm(ctx, blank_result(run_a), "iso", run_a, names.cold_app("iso", run_a))
    try:
        grant_b = keycloak.prepare_realm(ctx, blank_result(run_b), "iso", run_b, names.cold_app("iso", run_b))
        try:
            assert grant_a.realm != grant_b.realm
            token = password_grant(grant_a.url, grant_a.realm, grant_a.client_id, grant_a.client_secret,
                                   grant_a.user, grant_a.password)
            assert token["access_token"]
            # A's user with B's client in B: B has a user of that name, not A's password.
            with pytest.raises(ExternalError) as refused:
                password_grant(grant_b.url, grant_b.realm, grant_b.client_id, grant_b.client_secret,
                               grant_a.user, grant_a.password)
            assert refused.value.returncode == 401
            # A's client (and its secret) mean nothing in B either.
            with pytest.raises(ExternalError) as unknown:
                password_grant(grant_b.url, grant_b.realm, grant_a.client_id, grant_a.client_secret,
                               grant_a.user, grant_a.password)
            assert unknown.value.returncode in (400, 401)
        finally:
            keycloak.release_realm(ctx, blank_result(run_b), grant_b)
    finally:
        keycloak.release_realm(ctx, blank_result(run_a), grant_a)
    client = grant_a.endpoint.client()
    assert not {grant_a.realm, grant_b.realm} & realm_names(client)
    # Releasing twice is fine: the realm is already gone.
    keycloak.release_realm(ctx, blank_result(run_a), grant_a)


@pytest.mark.keycloak
def test_a_refused_admin_password_fails_the_run_instead_of_falling_back(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, keycloak_admin: dict[str, str]) -> None:
    wrong = tmp_path / "wrong-admin"
    wrong.write_text("not-the-admin-password")
    git_remote.edit({"ccci.yaml": settings_text(
        keycloak=external_keycloak(keycloak_admin["url"], str(wrong)),
        recipes="  iso: {source: /nonexistent, sso: keycloak}\n")}, "settings")
    context = Context.open(Registry(git_remote.clone("controller")), StateDir(state_dir))
    run_id = new_run_id("iso")
    result = blank_result(run_id)
    with pytest.raises(ExternalError, match="admin credentials were refused") as refused:
        keycloak.prepare_realm(context, result, "iso", run_id, names.cold_app("iso", run_id))
    assert refused.value.cause == "infra"
    assert not any(p.name.startswith("sso-keycloak") for p in result.phases), "it co-deployed"
    assert "not-the-admin-password" not in refused.value.message


@pytest.mark.keycloak
def test_a_garbled_admin_response_is_asked_again(keycloak_admin: dict[str, str]) -> None:
    """Keycloak can cut a realm listing short while a realm in it is deleted; python-keycloak
    then raises TypeError. The fault is injected once at that exact point; the real server
    answers the retry."""
    client = admin_client(keycloak_admin)
    calls = 0

    def get_realms_once_garbled(admin: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TypeError("Unexpected response type. Expected list, received <class 'bytes'>")
        return admin.get_realms()

    reps = client._call("list realms", get_realms_once_garbled, retry=True)
    assert calls == 2 and any(rep["realm"] == "master" for rep in reps or [])


@pytest.mark.keycloak
def test_a_listing_keycloak_could_not_write_out_is_asked_again(keycloak_admin: dict[str, str]) -> None:
    """The server's side of the same race: a 400 "Cannot parse the JSON" to a realm listing
    while a realm in it is deleted (seen in CI with four concurrent runs). Injected once at that
    exact point; the real server answers the retry. Any other 400 is not asked again."""
    from keycloak.exceptions import KeycloakGetError

    client = admin_client(keycloak_admin)
    calls = 0

    def get_realms_once_torn(admin: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeycloakGetError(error_message=b'{"error":"Cannot parse the JSON"}', response_code=400,
                                   response_body=b'{"error":"Cannot parse the JSON"}')
        return admin.get_realms()

    reps = client._call("list realms", get_realms_once_torn, retry=True)
    assert calls == 2 and any(rep["realm"] == "master" for rep in reps or [])

    def bad_request(admin: Any) -> Any:
        nonlocal calls
        calls += 1
        raise KeycloakGetError(error_message=b"{}", response_code=400, response_body=b'{"error":"invalid_request"}')

    calls = 0
    with pytest.raises(ExternalError, match=r"\(400\): invalid_request"):
        client._call("list realms", bad_request, retry=True)
    assert calls == 1


def test_reaper_deletes_only_this_controllers_realms_of_runs_no_longer_in_flight(
        ctx: Context, keycloak_admin: dict[str, str]) -> None:
    client = admin_client(keycloak_admin)
    dead, live = new_run_id("reap"), new_run_id("reap")
    stale = keycloak.prepare_realm(ctx, blank_result(dead), "reap", dead, names.cold_app("reap", dead))
    marker = inflight.begin(ctx.state, live)
    elsewhere = f"{live[:-6]}{(int(live[-6:], 16) + 1) % 0xFFFFFF:06x}"
    foreign = {"customer-abc": {}, f"billing-{dead[-6:]}": {},
               # Fits the scheme and carries a run mark, but another controller made it.
               f"reap-{elsewhere[-6:]}": {RUN_ATTRIBUTE: elsewhere, OWNER_ATTRIBUTE: "someone-else"}}
    try:
        in_use = keycloak.prepare_realm(ctx, blank_result(live), "reap", live, names.cold_app("reap", live))
        for name, attributes in foreign.items():
            assert rest(keycloak_admin, "POST", "/admin/realms",
                        {"realm": name, "enabled": True, "attributes": attributes}) in (201, 409)
        assert keycloak.reap_stale_realms(ctx) == [stale.realm]
        present = realm_names(client)
        assert stale.realm not in present
        assert {"master", in_use.realm, *foreign} <= present
        # Once its run ends, the in-flight run's realm is stale too.
        marker.end()
        assert keycloak.reap_stale_realms(ctx) == [in_use.realm]
        assert {"master", *foreign} <= realm_names(client)
    finally:
        marker.end()
        for name in foreign:
            rest(keycloak_admin, "DELETE", f"/admin/realms/{name}")
        for realm in (stale.realm, f"reap-{live[-6:]}"):
            client.delete_realm(realm)


# -- runs on the swarm ------------------------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.keycloak
def test_sso_app_cold_run_passes_on_its_own_realm_leaves_none_and_never_shows_the_admin_password(
        bed: SsoBed, keycloak_admin: dict[str, str]) -> None:
    run_id = bed.request()
    proc = helpers.ccci("--state-dir", str(bed.state), "--log-level", "DEBUG", "run", "--no-rewarm", "--registry",
                        str(bed.clone), run_id)
    result = helpers.results_in(bed.clone)[run_id]
    assert result["outcome"] == "pass", (result, proc.stderr[-3000:])
    realm = f"sso-app-{run_id[-6:]}"
    assert result["sso"]["realm"] == realm
    assert result["sso"]["keycloak"] == "external" and result["sso"]["released"] is True
    custom = next(a for a in result["asserts"] if a["name"].startswith("custom:"))
    assert "discovery ok" in custom["detail"] and "password grant ok" in custom["detail"], custom
    assert [p["name"] for p in result["phases"]][:4] == ["fetch", "policy", "sso-realm", "sso"]
    assert realm not in realm_names(admin_client(keycloak_admin))
    assert helpers.objects_of_app(names.cold_app("sso-app", run_id)) == []
    password = Path(keycloak_admin["secret_file"]).read_text().strip()
    assert places_holding(password, bed.clone, bed.state,
                          {"stdout": proc.stdout, "stderr": proc.stderr}) == []


@pytest.mark.docker
@pytest.mark.keycloak
def test_sso_app_upgrade_run_uses_one_realm_for_the_release_and_the_head_and_releases_it(
        bed: SsoBed, keycloak_admin: dict[str, str]) -> None:
    repo = bed.sso_app  # version 1 is the release 1.0.0
    compose = repo.read(repo.versions[1], "compose.yml")
    changed = compose.replace("      - SSO_PASSWORD=${CCCI_SSO_PASSWORD}\n",
                              "      - SSO_PASSWORD=${CCCI_SSO_PASSWORD}\n      - APP_RELEASE=1.1.0\n")
    assert changed != compose
    head = repo.commit_files("pr", {"compose.yml": changed}, message="a PR: one more variable")
    run_id = helpers.ccci("--state-dir", str(bed.state), "request", "--registry", str(bed.clone), "--recipe",
                          "sso-app", "--ref", head, "--mode", "upgrade", "--by", "alice", check=True).stdout.strip()
    proc = helpers.ccci("--state-dir", str(bed.state), "run", "--no-rewarm", "--registry", str(bed.clone), run_id)
    result = helpers.results_in(bed.clone)[run_id]
    assert result["outcome"] == "pass", (result, proc.stderr[-3000:])
    assert [(row["from"], row["verdict"]) for row in result["matrix"]] == [("1.0.0", "pass")]
    # The release and the head log in to the same realm: its user and clients outlive the upgrade.
    realm = f"sso-app-{run_id[-6:]}"
    logins = [a for a in result["asserts"] if "custom:" in a["name"]]
    assert [a["name"] for a in logins] == ["from 1.0.0: custom:tests/ccci-assert (from)",
                                           "from 1.0.0: custom:tests/ccci-assert (upgrade)"], logins
    granted = re.compile(rf"^password grant ok: token for ccci-user from \S+/realms/{realm}$", re.M)
    assert all(a["ok"] and granted.search(a["detail"]) for a in logins), logins
    assert result["sso"]["realm"] == realm and result["sso"]["released"] is True
    assert realm not in realm_names(admin_client(keycloak_admin))
    assert helpers.objects_of_app(names.cold_app("sso-app", run_id)) == []


@pytest.mark.docker
@pytest.mark.keycloak
def test_four_concurrent_sso_runs_get_four_distinct_realms_and_all_pass(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, keycloak_admin: dict[str, str],
        docker_host: str) -> None:
    bed = make_bed(git_remote, tmp_path, state_dir,
                   external_keycloak(keycloak_admin["url"], keycloak_admin["secret_file"]),
                   max_parallel_cold=4)
    runs = [bed.request() for _ in range(4)]
    realms = {f"sso-app-{run[-6:]}" for run in runs}
    client = admin_client(keycloak_admin)
    most_at_once = 0
    stop = threading.Event()
    watch_errors: list[BaseException] = []

    def watch() -> None:
        nonlocal most_at_once
        try:
            while not stop.is_set():
                most_at_once = max(most_at_once, len(realms & realm_names(client)))
                stop.wait(0.3)
        except BaseException as exc:  # a dead watcher would make most_at_once meaningless
            watch_errors.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(bed.clone),
                            "--once", "--poll-interval", "0.5")
    finally:
        stop.set()
        watcher.join()
    assert not watch_errors, watch_errors
    assert proc.returncode == 0, proc.stderr[-3000:]
    helpers.git(bed.clone, "pull", "-q", "--rebase")
    results = helpers.results_in(bed.clone)
    assert {run: results[run]["outcome"] for run in runs} == dict.fromkeys(runs, "pass"), proc.stderr[-3000:]
    assert {results[run]["sso"]["realm"] for run in runs} == realms and len(realms) == 4
    assert most_at_once >= 2, "the runs' realms never existed side by side"
    assert not realms & realm_names(client)
    for run in runs:
        assert helpers.objects_of_app(names.cold_app("sso-app", run)) == []
    password = Path(keycloak_admin["secret_file"]).read_text().strip()
    assert places_holding(password, bed.clone, state_dir,
                          {"stdout": proc.stdout, "stderr": proc.stderr}) == []


@pytest.fixture
def killed_run(bed: SsoBed, keycloak_admin: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A run SIGKILLed once its realm exists: (run id, realm). Its stack is removed after."""
    run_id = bed.request()
    realm = f"sso-app-{run_id[-6:]}"
    client = admin_client(keycloak_admin)
    proc = subprocess.Popen([sys.executable, "-m", "controller", "--state-dir", str(bed.state), "run",
                             "--registry", str(bed.clone), run_id],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=helpers.REPO_ROOT,
                            start_new_session=True)
    try:
        wait_for(lambda: client.realm_exists(realm), 120, f"realm {realm} to exist")
    finally:
        # The whole group: a `docker stack deploy` child must not finish the deploy afterwards.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    try:
        yield run_id, realm
    finally:
        # The sacred start-up teardown removes whatever the killed run had deployed.
        helpers.ccci("--state-dir", str(bed.state), "serve", "--registry", str(bed.clone), "--once")
        if client.realm_exists(realm):
            client.delete_realm(realm)
        assert helpers.objects_of_app(names.cold_app("sso-app", run_id)) == []


@pytest.mark.docker
@pytest.mark.keycloak
def test_realm_left_by_a_sigkilled_run_is_reaped(bed: SsoBed, killed_run: tuple[str, str],
                                                  keycloak_admin: dict[str, str]) -> None:
    run_id, realm = killed_run
    client = admin_client(keycloak_admin)
    assert client.realm_exists(realm), "the killed run should have left its realm behind"
    assert not inflight.is_in_flight(StateDir(bed.state), run_id)
    proc = helpers.ccci("--state-dir", str(bed.state), "warm", "reap", "--registry", str(bed.clone))
    assert proc.returncode == 0, proc.stderr
    assert f"deleted realm {realm}" in proc.stdout
    assert not client.realm_exists(realm)
    assert "master" in realm_names(client)


@pytest.mark.docker
@pytest.mark.keycloak
def test_run_falls_back_to_a_co_deployed_keycloak_when_the_warm_one_is_down_and_leaves_nothing(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, keycloak_admin: dict[str, str],
        docker_host: str) -> None:
    bed = make_bed(git_remote, tmp_path, state_dir,
                   external_keycloak(DOWN_URL, keycloak_admin["secret_file"]))
    run_id = bed.request()
    proc = helpers.ccci("--state-dir", str(state_dir), "run", "--no-rewarm", "--registry", str(bed.clone), run_id)
    result = helpers.results_in(bed.clone)[run_id]
    assert result["outcome"] == "pass", (result, proc.stderr[-3000:])
    app = names.cold_app("sso-app", run_id)
    sso = result["sso"]
    assert sso["keycloak"] == "co-deployed" and sso["co_deployed_app"] == f"{app}-kc", sso
    assert "not healthy" in sso["fallback"] and DOWN_URL in sso["fallback"], sso
    assert sso["url"].startswith("http://127.0.0.1:") and sso["url"] != DOWN_URL
    custom = next(a for a in result["asserts"] if a["name"].startswith("custom:"))
    # The app reached the co-deployed Keycloak from inside the stack, over the SSO network.
    assert f"stack ok: the app reached http://{app}-kc_app:8080" in custom["detail"], custom
    phase_names = [p["name"] for p in result["phases"]]
    assert {"sso-keycloak-deploy", "sso-keycloak-ready", "sso-keycloak-teardown"} <= set(phase_names)
    assert helpers.objects_of_app(app) == [] and helpers.objects_of_app(f"{app}-kc") == []
    alert = json.loads((state_dir / "alerts" / "warm-keycloak-down.json").read_text())
    assert DOWN_URL in alert["message"]
