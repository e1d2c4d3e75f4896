"""The forge: PR comments in (webhook, poll), verdicts out (statuses, one comment per run), against
a forge test server held to Gitea's and Forgejo's published API documents, on real git."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.flows import runs
from controller.flows.context import Context
from controller.flows.forge import outbox
from controller.flows.forge.authority import admitting_rule
from controller.flows.forge.intake import handle_comment
from controller.flows.forge.reporter import verdict_comment
from controller.flows.forge.service import Cursor, poll_once
from controller.flows.requests import trigger_mode
from controller.forge import CommentEvent, ForgeClient, signature_ok
from controller.registry.results import AssertOutcome, Phase, RunResult
from controller.registry.settings import settings_from_document
from controller.registry.store import Registry
from controller.util.errors import BadInput
from controller.util.paths import StateDir
from controller.util.yamlio import load_untrusted
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.forge_server import FakeForge
from tests.helpers import RemoteRegistry, wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "webhook-secret-of-the-test"
REPO = "coop/static"


@pytest.fixture(params=["gitea", "forgejo"])
def forge(request: pytest.FixtureRequest) -> Iterator[FakeForge]:
    with FakeForge(request.param) as fake:
        fake.org("coop", "alice", "carol")
        fake.team("coop", "maintainers", "alice")
        fake.user("mallory")
        yield fake
        assert fake.violations == [], fake.violations  # every request ccci sent was in the document


@dataclass
class Bed:
    forge: FakeForge
    remote: RemoteRegistry
    clone: Path
    state: Path
    recipe: RecipeRepo
    secrets: Path

    def settings_text(self, *, forge_url: str | None = None) -> str:
        return (f"base_domain: ci.test\nidentity: {{name: ccci-test, email: ccci@test.invalid}}\n"
                f"authority: {{cold: ['org:coop', sweep], quick: ['team:coop/maintainers']}}\n"
                f"limits: {{max_parallel_cold: 2, disk_min_free_gb: 0}}\nsweep: {{max_tests: 0}}\n"
                f"forge: {{url: '{forge_url or self.forge.url}', token_file: {self.secrets / 'token'}, "
                f"webhook_secret_file: {self.secrets / 'secret'}, "
                f"results_url: 'https://git.test/ci/registry/src/branch/main/{{path}}'}}\n"
                f"recipes:\n  static: {{source: {self.recipe.path}, forge_repo: {REPO}, timeout_s: 120, "
                f"stability_s: 1}}\n")

    def context(self) -> Context:
        return Context.open(Registry(self.clone), StateDir(self.state))

    def requests(self) -> dict[str, dict[str, Any]]:
        """The requests on the remote (the receiver works in the clone: leave it alone)."""
        bare = self.remote.bare
        names = helpers.git(bare, "ls-tree", "--name-only", "main", "requests/").split()
        return {Path(n).stem: load_untrusted(helpers.git(bare, "show", f"main:{n}").encode(), n)
                for n in names if n.endswith(".yaml")}


@pytest.fixture
def bed(forge: FakeForge, git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path) -> Bed:
    recipe = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text(forge.token + "\n")
    (secrets / "secret").write_text(SECRET + "\n")
    made = Bed(forge, git_remote, git_remote.base / "controller", state_dir, recipe, secrets)
    git_remote.edit({"ccci.yaml": made.settings_text()})
    git_remote.clone("controller")
    forge.pull(REPO, 7, recipe.branch_commit("pr-7", 1))
    return made


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Webhook:
    """`ccci forge webhook` in a subprocess."""

    def __init__(self, bed: Bed) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/ccci"
        self.log_path = bed.state.parent / f"webhook-{self.port}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--state-dir", str(bed.state), "forge", "webhook",
             "--registry", str(bed.clone), "--listen", f"127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        wait_for(self._healthy, 60, f"the webhook receiver on port {self.port}\n{self.log_path}")

    def _healthy(self) -> bool:
        import urllib.request
        if self.proc.poll() is not None:
            raise AssertionError(f"the receiver exited: {self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def webhook(bed: Bed) -> Iterator[Webhook]:
    receiver = Webhook(bed)
    yield receiver
    assert receiver.stop() == 0, receiver.log()


# -- pure parts ---------------------------------------------------------------------------------

def test_triggers_are_exact_and_look_alikes_are_answered_not_ignored() -> None:
    assert trigger_mode("!testme") == "cold" and trigger_mode("  !testme --quick\n") == "quick"
    assert trigger_mode("LGTM, thanks") is None and trigger_mode("") is None
    assert trigger_mode("see !testme in the docs") is None
    for malformed in ("!testme please", "!testme --cold", "!TESTME", "!test\u200bme", "\uff01testme",
                      "!testme\u202e --quick", "!testme  --quick"):
        with pytest.raises(BadInput, match="is not a ccci trigger"):
            trigger_mode(malformed)


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    import hashlib
    import hmac
    body = b'{"a": 1}'
    good = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature_ok(b"s3cret", body, good) and signature_ok(b"s3cret", body, f"sha256={good}")
    assert not signature_ok(b"s3cret", body + b" ", good)
    assert not signature_ok(b"other", body, good)
    assert not signature_ok(b"s3cret", body, None) and not signature_ok(b"s3cret", body, "")


def test_authority_rules_ask_the_forge_for_orgs_teams_and_collaborators(forge: FakeForge) -> None:
    forge.repo(REPO).collaborators["dave"] = "write"
    forge.repo(REPO).collaborators["erin"] = "read"
    client = ForgeClient(forge.url, forge.token)
    try:
        assert admitting_rule(client, ("org:coop",), "carol", REPO) == "org:coop"
        assert admitting_rule(client, ("team:coop/maintainers",), "carol", REPO) is None
        assert admitting_rule(client, ("team:coop/maintainers",), "alice", REPO) == "team:coop/maintainers"
        assert admitting_rule(client, ("collaborator",), "dave", REPO) == "collaborator"
        assert admitting_rule(client, ("collaborator",), "erin", REPO) is None
        assert admitting_rule(client, ("mallory", "org:coop"), "mallory", REPO) == "mallory"
        assert admitting_rule(client, ("*",), "anyone", REPO) == "*"
        assert admitting_rule(client, ("org:coop", "team:coop/maintainers", "collaborator"), "mallory", REPO) is None
    finally:
        client.close()


def test_verdict_comment_says_what_the_mode_proves_what_failed_and_a_fallback() -> None:
    settings = settings_from_document({"base_domain": "ci.test", "forge": {
        "url": "https://git.test", "token_file": "/x", "results_url": "https://git.test/r/{path}"}})
    result = RunResult(run="20261202T100000-static-abcdef", recipe="static", ref="b" * 40, mode="cold",
                       requested_mode="quick", fallback="no-canonical", outcome="fail", started_at="x",
                       error="asserts failed: http", cause="recipe")
    result.asserts = [AssertOutcome("converged", True, "ok"), AssertOutcome("http", False, "GET / → 502")]
    result.phases = [Phase("deploy", "ok", 1.25), Phase("asserts", "failed", 2.0)]
    text = verdict_comment(settings.forge, result)
    assert text.startswith("<!-- ccci:verdict:20261202T100000-static-abcdef -->")
    assert "**ccci cold: fail**" in text and "`static@bbbbbbb`" in text
    assert "a fresh install" in text and "it gates merging (`ccci/cold`)" in text
    assert "You asked for *quick*; *cold* ran instead: no-canonical" in text
    assert "- `http`: GET / → 502" in text and "`converged`" not in text
    assert "deploy 1.2 s · asserts 2.0 s ✗" in text
    assert "(https://git.test/r/results/2026-12/20261202T100000-static-abcdef.yaml)" in text


# -- intake by webhook --------------------------------------------------------------------------

def test_one_comment_is_one_request_whatever_the_redeliveries_and_bad_signatures_file_nothing(
        bed: Bed, webhook: Webhook) -> None:
    forge = bed.forge
    payload = forge.delivery(REPO, 7, "carol", "!testme")
    assert forge.send(webhook.url, "wrong-secret", payload)[0] == 401
    assert forge.send(webhook.url, SECRET, payload, signature="")[0] == 401
    assert bed.requests() == {}
    answers = [forge.send(webhook.url, SECRET, payload) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200], answers
    assert answers[0][1].startswith("filed: ") and all(a[1].startswith("duplicate") for a in answers[1:])
    requests = bed.requests()
    assert len(requests) == 1, requests
    (run_id, doc), = requests.items()
    assert doc["ref"] == forge.repo(REPO).pulls[7]["sha"] and doc["mode"] == "cold"
    assert doc["requested_by"] == "carol" and doc["pr"] == 7
    assert doc["forge"] == {"repo": REPO, "pr": 7, "comment_id": payload["comment"]["id"], "allowed_by": "org:coop"}
    assert run_id == answers[0][1].removeprefix("filed: ").strip()
    # The controller takes it as authorised: org:coop is in authority.cold.
    request = bed.context().registry.read_request(f"{run_id}.yaml")
    assert runs.decide(bed.context(), request) == runs.Decision("cold")


def malformed_deliveries(forge: FakeForge) -> list[tuple[str, bytes | dict[str, Any], str]]:
    """(what, body, event): 30+ deliveries that must file nothing."""
    good = forge.delivery(REPO, 7, "carol", "!testme please")  # itself answered, not filed

    def without(*path: str) -> dict[str, Any]:
        doc = json.loads(json.dumps(good))
        target = doc
        for key in path[:-1]:
            target = target[key]
        target.pop(path[-1])
        return doc

    def replaced(value: Any, *path: str) -> dict[str, Any]:
        doc = json.loads(json.dumps(good))
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return doc

    forge.repo("coop/wiki")
    issue = forge.delivery("coop/wiki", 3, "carol", "!testme")  # an issue, not a PR
    cases: list[tuple[str, bytes | dict[str, Any], str]] = [
        ("not json", b"not json at all", "issue_comment"),
        ("a list", b"[1, 2, 3]", "issue_comment"),
        ("null", b"null", "issue_comment"),
        ("truncated", json.dumps(good).encode()[:200], "issue_comment"),
        ("latin-1", "{\"action\": \"créé\"}".encode("latin-1"), "issue_comment"),
        ("no action", without("action"), "issue_comment"),
        ("no comment", without("comment"), "issue_comment"),
        ("no issue", without("issue"), "issue_comment"),
        ("no repository", without("repository"), "issue_comment"),
        ("no comment id", without("comment", "id"), "issue_comment"),
        ("no comment body", without("comment", "body"), "issue_comment"),
        ("no comment user", without("comment", "user"), "issue_comment"),
        ("no login", without("comment", "user", "login"), "issue_comment"),
        ("no issue number", without("issue", "number"), "issue_comment"),
        ("id as a string", replaced("12", "comment", "id"), "issue_comment"),
        ("id negative", replaced(-5, "comment", "id"), "issue_comment"),
        ("body as a list", replaced(["!testme"], "comment", "body"), "issue_comment"),
        ("number as a float", replaced(7.5, "issue", "number"), "issue_comment"),
        ("number zero", replaced(0, "issue", "number"), "issue_comment"),
        ("repo with a slash too many", replaced("a/b/c", "repository", "full_name"), "issue_comment"),
        ("repo ../", replaced("../etc", "repository", "full_name"), "issue_comment"),
        ("login empty", replaced("", "comment", "user", "login"), "issue_comment"),
        ("body of 70 kB", replaced("!testme" + " " * 70000, "comment", "body"), "issue_comment"),
        ("a push event", good, "push"),
        ("a pull_request event", good, "pull_request"),
        ("no event header", good, ""),
        ("an edit", replaced("edited", "action"), "issue_comment"),
        ("a deletion", replaced("deleted", "action"), "issue_comment"),
        ("on an issue", issue, "issue_comment"),
        ("unicode look-alike", replaced("\uff01testme", "comment", "body"), "issue_comment"),
        ("zero-width", replaced("!test\u200bme", "comment", "body"), "issue_comment"),
        ("right-to-left override", replaced("!testme\u202e --quick", "comment", "body"), "issue_comment"),
        ("10 MB", b"{" + b" " * (10 * 1024 * 1024) + b"}", "issue_comment"),
        ("unknown repository", replaced("coop/unknown", "repository", "full_name"), "issue_comment"),
    ]
    return cases


def test_malformed_deliveries_are_refused_or_answered_and_the_receiver_keeps_serving(
        bed: Bed, webhook: Webhook) -> None:
    forge = bed.forge
    cases = malformed_deliveries(forge)
    assert len(cases) >= 30
    for what, body, event in cases:
        status, text = forge.send(webhook.url, SECRET, body, event=event)
        refused = 400 <= status < 500 or (status == 0 and what == "10 MB")
        assert refused or (status == 202 and text.startswith(("ignored", "replied"))), (what, status, text)
    assert bed.requests() == {}, "a malformed delivery filed a request"
    # Still serving: a good comment is filed.
    status, text = forge.send(webhook.url, SECRET, forge.delivery(REPO, 7, "carol", "!testme"))
    assert (status, text.split(":")[0]) == (200, "filed"), text
    assert len(bed.requests()) == 1
    assert "Traceback" not in webhook.log()


def test_who_may_not_or_what_cannot_run_is_answered_once_on_the_pr(bed: Bed, webhook: Webhook) -> None:
    forge = bed.forge
    forge.pull(REPO, 8, bed.recipe.branch_commit("pr-8", 1), state="closed")
    mallory = forge.delivery(REPO, 7, "mallory", "!testme")
    quick_by_carol = forge.delivery(REPO, 7, "carol", "!testme --quick")  # org member, not a maintainer
    closed = forge.delivery(REPO, 8, "alice", "!testme")
    typo = forge.delivery(REPO, 7, "alice", "!testme now")
    for payload in (mallory, quick_by_carol, closed, typo, mallory):  # mallory's delivered twice
        status, text = forge.send(webhook.url, SECRET, payload)
        assert status == 202 and text.startswith("replied"), text

    def replies() -> list[str] | None:
        bodies = forge.posted_comments(REPO, 7) + forge.posted_comments(REPO, 8)
        return bodies if len(bodies) >= 4 else None

    bodies = wait_for(replies, 60, "the replies on the PRs")
    assert bed.requests() == {}
    assert len(bodies) == 4, bodies  # one reply per comment, whatever the redeliveries
    text = "\n".join(bodies)
    assert "@mallory: no run — mallory may not request cold runs (authority.cold" in text
    assert "carol may not request quick runs (authority.quick" in text
    assert "pull request #8 is not open" in text
    assert "'!testme now' is not a ccci trigger" in text
    assert forge.statuses == []


def test_edits_the_bots_own_comments_and_chatter_are_ignored_silently(bed: Bed, webhook: Webhook) -> None:
    forge = bed.forge
    for payload in (forge.delivery(REPO, 7, "carol", "looks good to me"),
                    forge.delivery(REPO, 7, forge.bot, "!testme"),
                    forge.delivery(REPO, 7, "carol", "<!-- ccci:reply:1 -->\n!testme")):
        status, text = forge.send(webhook.url, SECRET, payload)
        assert status == 202 and text.startswith("ignored"), text
    assert bed.requests() == {}
    assert forge.posted_comments(REPO, 7) == ["!testme"]  # the bot's own, made by this test: no reply


# -- intake by polling --------------------------------------------------------------------------

def test_two_pollers_on_one_registry_file_each_of_20_comments_once(bed: Bed, tmp_path: Path) -> None:
    forge = bed.forge
    second = Bed(forge, bed.remote, bed.remote.clone("poller-b"), tmp_path / "state-b", bed.recipe, bed.secrets)
    contexts = [bed.context(), Context.open(Registry(second.clone), StateDir(second.state))]
    clients = [ForgeClient(forge.url, forge.token) for _ in contexts]
    cursors = [Cursor(ctx) for ctx in contexts]
    try:
        for ctx, client, cursor in zip(contexts, clients, cursors, strict=True):
            poll_once(ctx, client, forge.bot, cursor)  # first look: marks what is there
        for n in range(20):  # alice is in the org and the team: every one may run
            forge.add_comment(REPO, 7, "alice", "!testme" if n % 3 else "!testme --quick")
        import threading
        threads = [threading.Thread(target=poll_once, args=(ctx, client, forge.bot, cursor))
                   for ctx, client, cursor in zip(contexts, clients, cursors, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        for ctx, client, cursor in zip(contexts, clients, cursors, strict=True):
            poll_once(ctx, client, forge.bot, cursor)  # nothing new: nothing filed twice
    finally:
        for client in clients:
            client.close()
    requests = bed.requests()
    assert len(requests) == 20, sorted(r["forge"]["comment_id"] for r in requests.values())
    assert len({r["forge"]["comment_id"] for r in requests.values()}) == 20
    assert sum(1 for r in requests.values() if r["mode"] == "quick") == 7


def test_the_poller_stops_at_sigterm_while_it_waits_for_its_next_poll(bed: Bed) -> None:
    log_path = bed.state.parent / "poller.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--state-dir", str(bed.state), "forge", "poll",
             "--registry", str(bed.clone), "--interval", "600"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        try:
            wait_for(lambda: proc.poll() is not None or StateDir(bed.state).forge_cursor.exists(), 60,
                     "the first poll's cursor")
            assert proc.poll() is None, log_path.read_text()
            proc.terminate()  # ten minutes before its next poll
            assert proc.wait(timeout=30) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_repository_polled_the_first_time_does_not_replay_its_history(bed: Bed) -> None:
    forge = bed.forge
    old = forge.add_comment(REPO, 7, "carol", "!testme")
    ctx, client = bed.context(), ForgeClient(forge.url, forge.token)
    cursor = Cursor(ctx)
    try:
        assert poll_once(ctx, client, forge.bot, cursor).by_outcome == {}
        new = forge.add_comment(REPO, 7, "carol", "!testme")
        assert poll_once(ctx, client, forge.bot, cursor).by_outcome == {"filed": 1}
    finally:
        client.close()
    assert [r["forge"]["comment_id"] for r in bed.requests().values()] == [new["id"]]
    assert old["id"] != new["id"]


def test_testme_upgrade_files_an_upgrade_request_that_cold_authority_admits_while_authority_upgrade_is_unset(
        bed: Bed) -> None:
    ctx, client = bed.context(), ForgeClient(bed.forge.url, bed.forge.token)
    try:
        comment = bed.forge.add_comment(REPO, 7, "carol", "!testme --upgrade")
        event = CommentEvent(REPO, 7, True, "created", comment["id"], "!testme --upgrade", "carol",
                             comment["created_at"])
        intake = handle_comment(ctx, client, bed.forge.bot, event)
    finally:
        client.close()
    assert intake.outcome == "filed", intake
    doc = bed.requests()[str(intake.run_id)]
    assert (doc["mode"], doc["requested_by"], doc["trigger"]) == ("upgrade", "carol", "!testme --upgrade")
    assert doc["forge"]["allowed_by"] == "org:coop"  # authority.cold's rule: upgrade is unset
    request = bed.context().registry.read_request(f"{intake.run_id}.yaml")
    assert runs.decide(bed.context(), request) == runs.Decision("upgrade")


# -- verdicts -----------------------------------------------------------------------------------

def file_by_comment(bed: Bed, login: str, body: str) -> str:
    ctx, client = bed.context(), ForgeClient(bed.forge.url, bed.forge.token)
    try:
        comment = bed.forge.add_comment(REPO, 7, login, body)
        event = CommentEvent(REPO, 7, True, "created", comment["id"], body, login, comment["created_at"])
        intake = handle_comment(ctx, client, bed.forge.bot, event)
    finally:
        client.close()
    assert intake.outcome == "filed", intake
    assert intake.run_id
    return intake.run_id


def test_reports_arrive_once_in_order_through_an_outage_and_a_lost_answer(bed: Bed) -> None:
    forge = bed.forge
    run_id = file_by_comment(bed, "carol", "!testme")
    ctx = bed.context()
    ctx.registry.sync()
    request, decision = runs.admit(ctx, f"{run_id}.yaml")
    run = runs.claim(ctx, request, decision)
    assert run is not None
    run.result.outcome, run.result.finished_at = "pass", "2026-12-02T10:00:00Z"
    forge.fail(*[502] * 8)  # the forge is down: the pending status and the rest wait
    client = ForgeClient(forge.url, forge.token)
    try:
        first = outbox.drain(ctx.state, client)
        assert first.delivered == [] and first.waiting, first
        runs.finish(ctx, run)  # the verdict is queued behind the pending status
        assert [r.key for r in outbox.queued(ctx.state)] == [f"status-{run_id}-final", f"comment-{run_id}"]
        assert outbox.health(ctx.state)["queued"] == 2
        alerts = [a["key"] for a in helpers_alerts(ctx)]
        assert "forge-down" in alerts
        forge.failures.clear()
        forge.lose_next_comment_answer = True  # the comment is made, its answer lost
        later = outbox.drain(ctx.state, client, now=10**10)
        assert later.delivered == [f"status-{run_id}-final"] and later.waiting == [f"comment-{run_id}"], later
        # A restarted controller (a new client, the same state dir) finds the comment made.
        final = outbox.drain(ctx.state, ForgeClient(forge.url, forge.token), now=10**11)
        assert final.delivered == [f"comment-{run_id}"], final
    finally:
        client.close()
    sha = request.ref
    assert forge.statuses_of(sha) == [("ccci/cold", "success")]  # the superseded pending never went out
    bodies = forge.posted_comments(REPO, 7)
    assert len(bodies) == 1 and f"ccci:verdict:{run_id}" in bodies[0], bodies
    assert outbox.queued(ctx.state) == [] and "forge-down" not in [a["key"] for a in helpers_alerts(ctx)]
    status = forge.statuses[-1]
    assert status["target_url"].endswith(f"/results/{run_id[:4]}-{run_id[4:6]}/{run_id}.yaml")


def helpers_alerts(ctx: Context) -> list[dict[str, Any]]:
    from controller.util.alerts import list_alerts
    return list_alerts(ctx.state)


def test_the_token_and_webhook_secret_never_reach_logs_results_or_git(bed: Bed, webhook: Webhook) -> None:
    forge = bed.forge
    forge.send(webhook.url, SECRET, forge.delivery(REPO, 7, "mallory", "!testme"))
    forge.send(webhook.url, SECRET, forge.delivery(REPO, 7, "carol", "!testme"))
    wait_for(lambda: forge.posted_comments(REPO, 7), 60, "the reply to mallory")
    history = helpers.git(bed.remote.bare, "log", "-p", "--all")
    files = [p.read_text(errors="replace") for p in bed.state.rglob("*") if p.is_file() and p.stat().st_size < 10**7]
    for secret in (forge.token, SECRET):
        assert secret not in webhook.log()
        assert secret not in history
        assert all(secret not in text for text in files)


# -- end to end, on the real swarm --------------------------------------------------------------

@pytest.mark.docker
def test_pr_comments_become_runs_on_the_swarm_and_their_verdicts_come_back_to_the_pr(
        bed: Bed, webhook: Webhook, docker_host: str) -> None:
    forge = bed.forge
    main_head = bed.recipe.versions[1]
    forge.pull(REPO, 9, main_head)  # a PR whose head is already on main: its cold run promotes
    serve = helpers.ServeProcess(bed.remote.clone("serve"), bed.state, "--poll-interval", "0.5")
    try:
        def statuses(sha: str, count: int) -> list[tuple[str, str]] | None:
            found = forge.statuses_of(sha)
            return found if len(found) >= count and found[-1][1] != "pending" else None

        # 1. quick asked, no canonical yet: cold runs instead, and says so.
        forge.send(webhook.url, SECRET, forge.delivery(REPO, 9, "alice", "!testme --quick"))
        assert wait_for(lambda: statuses(main_head, 2), 300, "the fallback's statuses") == [
            ("ccci/cold", "pending"), ("ccci/cold", "success")], serve.log()[-3000:]
        fallback = wait_for(lambda: forge.posted_comments(REPO, 9), 60, "the fallback's comment")
        assert len(fallback) == 1 and "**ccci cold: pass**" in fallback[0]
        assert "You asked for *quick*; *cold* ran instead: no-canonical" in fallback[0]
        # Its promotion is rewarmed by serve: a last-known-good to run quick against.
        wait_for(lambda: f"snapshots-index/{helpers.HOST}/warm-static.yaml" in helpers.git(
            bed.remote.bare, "ls-tree", "-r", "--name-only", "main"), 300, "the rewarm's snapshot index")

        # 2. quick by a maintainer on a PR head: ccci/quick, informational.
        pr_head = forge.repo(REPO).pulls[7]["sha"]
        forge.send(webhook.url, SECRET, forge.delivery(REPO, 7, "alice", "!testme --quick"))
        assert wait_for(lambda: statuses(pr_head, 2), 300, "the quick run's statuses") == [
            ("ccci/quick", "pending"), ("ccci/quick", "success")], serve.log()[-3000:]
        # 3. cold by an org member on the same head: ccci/cold, which gates.
        forge.send(webhook.url, SECRET, forge.delivery(REPO, 7, "carol", "!testme"))
        assert wait_for(lambda: statuses(pr_head, 4), 300, "the cold run's statuses")[2:] == [
            ("ccci/cold", "pending"), ("ccci/cold", "success")], serve.log()[-3000:]
        verdicts = wait_for(lambda: (c := forge.posted_comments(REPO, 7)) and len(c) >= 2 and c, 60,
                            "both verdict comments")
        assert len(verdicts) == 2, verdicts
        assert "**ccci quick: pass**" in verdicts[0] and "never gates a merge (`ccci/quick`)" in verdicts[0]
        assert "**ccci cold: pass**" in verdicts[1] and "it gates merging (`ccci/cold`)" in verdicts[1]
        status = json.loads(helpers.ccci("--state-dir", str(bed.state), "status", "--registry", str(bed.clone),
                                         "--json", check=True).stdout)
        assert status["forge"]["queued"] == 0 and status["forge"]["last_success_at"], status["forge"]
    finally:
        assert serve.stop() == 0, serve.log()
    assert forge.token not in serve.log()
