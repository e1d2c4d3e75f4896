"""`ccci audit` over real git histories built by hand: results and canonicals committed as the
controller and as someone else. Needs git only (the cold runs that write such histories for real
are in test_canonical.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.flows.audit import AuditReport, audit
from controller.registry import git as gitmod
from controller.registry.results import RunResult, commit_message
from controller.util.names import result_rel
from controller.util.yamlio import dump_document
from tests import helpers
from tests.helpers import SETTINGS_HEAD, RemoteRegistry

V1, V2, PR = "1" * 40, "2" * 40, "3" * 40


def identity(email: str) -> dict[str, str]:
    return {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
            for what, value in (("NAME", "ccci-test"), ("EMAIL", email))}


CONTROLLER = identity("ccci@test.invalid")  # identity.email of helpers.SETTINGS_HEAD
PERSON: dict[str, str] = {}  # helpers.GIT_IDENTITY: whoever else pushes
HUMAN = "Test Person <test@example.org>"


def run_id(n: int) -> str:
    return f"20261201T09{n // 60:02d}{n % 60:02d}-static-{n:06x}"


def result_doc(run: str, outcome: str, ref: str = V1, *, advanced: bool = False) -> RunResult:
    result = RunResult(run=run, recipe="static", ref=ref, mode="cold", requested_mode="cold", outcome=outcome,
                       started_at="2026-12-01T09:00:00Z", requested_by="alice")
    if advanced:
        result.canonical = {"before": None, "after": ref, "advanced": True}
    return result


def canonical_doc(known_good: str, run: str) -> str:
    return dump_document({"recipe": "static", "source": "/srv/static", "known_good": known_good,
                          "domain": "warm-static.ci.test", "promoted_by_run": run,
                          "promoted_at": "2026-12-01T09:10:00Z"})


class History:
    """A registry clone whose commits the test writes, as the controller or as a person."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def commit(self, files: dict[str, str | None], message: str, *, by: dict[str, str] = CONTROLLER) -> str:
        for rel, text in files.items():
            path = self.root / rel
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        helpers.git(self.root, "add", "-A")
        helpers.git(self.root, "commit", "-qm", message, env=by)
        return helpers.git(self.root, "rev-parse", "HEAD")

    def result(self, result: RunResult, label: str = "cold", *, extra: dict[str, str | None] | None = None,
               by: dict[str, str] = CONTROLLER, suffix: str = "") -> str:
        """Commit one result (and `extra` files) with the controller's commit message."""
        files: dict[str, str | None] = {result_rel(result.run): dump_document(result.to_document()), **(extra or {})}
        return self.commit(files, commit_message(result, label=label, extra=suffix), by=by)

    def cold_run(self, run: str, ref: str, *, promote: bool) -> str:
        """Claim, then the verdict; a promoting one writes the canonical in the verdict's commit."""
        self.result(result_doc(run, "running", ref))
        verdict = result_doc(run, "pass", ref, advanced=promote)
        if promote:
            return self.result(verdict, extra={"canonicals/static.yaml": canonical_doc(ref, run)},
                               suffix="canonical advanced")
        return self.result(verdict)


@pytest.fixture
def history(git_remote: RemoteRegistry) -> History:
    return History(git_remote.clone("registry"))


def counted(history: History) -> tuple[int, int]:
    """Commits on the line, and how many of them a person made."""
    emails = helpers.git(history.root, "log", "--first-parent", "--format=%ae").split()
    return len(emails), emails.count(helpers.GIT_IDENTITY["GIT_AUTHOR_EMAIL"])


def sentences(report: AuditReport) -> list[str]:
    return [v.sentence() for v in report.violations]


def test_a_history_the_controller_wrote_passes_with_every_result_and_canonical_counted(
        history: History) -> None:
    history.cold_run(run_id(1), V1, promote=True)
    history.cold_run(run_id(2), PR, promote=False)  # green, but an unmerged PR head
    history.cold_run(run_id(3), V2, promote=True)
    rejected = result_doc(run_id(4), "rejected")
    rejected.mode = None
    history.result(rejected, label="reject")
    report = audit(history.root)
    assert sentences(report) == []
    total, others = counted(history)
    assert (report.canonical_changes, report.commits, report.others) == (2, total, others)
    proc = helpers.ccci("audit", "--registry", str(history.root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"audit ok: {total} commits ({others} not the controller's) and "
                                  "2 canonical changes;")


def test_every_result_someone_else_writes_is_named_with_its_commit(history: History) -> None:
    history.cold_run(run_id(1), V1, promote=False)
    failed = result_doc(run_id(2), "fail")
    history.result(result_doc(run_id(2), "running"))
    history.result(failed)
    # A person answers a pending request so that it never runs, and turns a fail into a pass.
    blocked = history.result(result_doc(run_id(3), "pass"), by=PERSON)
    flipped = history.result(result_doc(run_id(2), "pass"), by=PERSON)
    # Not results the controller reads or writes: a note beside them, and a deletion (archiving).
    history.commit({"results/README.md": "results of the CI\n"}, "explain results/", by=PERSON)
    history.commit({result_rel(run_id(1)): None}, "archive an old result", by=PERSON)
    report = audit(history.root)
    assert sentences(report) == [
        f"commit {blocked[:12]}: {result_rel(run_id(3))}: a result authored by {HUMAN}, "
        "not the controller <ccci@test.invalid>",
        f"commit {flipped[:12]}: {result_rel(run_id(2))}: a result authored by {HUMAN}, "
        "not the controller <ccci@test.invalid>",
    ]
    proc = helpers.ccci("audit", "--registry", str(history.root))
    assert proc.returncode == 1
    assert f"commit {blocked[:12]}: {result_rel(run_id(3))}: a result authored by" in proc.stderr
    total, others = counted(history)
    assert proc.stderr.rstrip().endswith(f"audit failed: 2 violations in {total} commits ({others} not the "
                                         "controller's) and 0 canonical changes")


def test_a_canonical_change_needs_its_promoting_result_written_in_the_same_commit(history: History) -> None:
    history.cold_run(run_id(1), V1, promote=True)
    history.cold_run(run_id(2), PR, promote=False)
    # With the controller's identity and message, pin the unmerged PR head, naming its green run
    # whose result was committed earlier (and never said it advanced anything).
    subject = f"[cold] static@{PR[:7]} pass (run {run_id(2)}); canonical advanced"
    pinned = history.commit({"canonicals/static.yaml": canonical_doc(PR, run_id(2))}, subject)
    # The same, rewriting that result in the same commit: the result check has nothing against
    # the controller's identity, but the result must record the advance the commit claims.
    history.commit({"canonicals/static.yaml": canonical_doc(V1, run_id(1))}, "back")
    rewritten = result_doc(run_id(2), "pass", PR)
    rewritten.error = "rewritten"
    forged = history.result(rewritten, extra={
        "canonicals/static.yaml": canonical_doc(PR, run_id(2))}, suffix="canonical advanced")
    report = audit(history.root)
    assert sentences(report) == [
        f"commit {pinned[:12]}: canonicals/static.yaml: the commit does not write {result_rel(run_id(2))}, "
        "the result of the run that promoted it",
        f"commit {helpers.git(history.root, 'rev-parse', 'HEAD~1')[:12]}: canonicals/static.yaml: the commit "
        "message 'back' is not the controller's green cold result of run " + run_id(1),
        f"commit {forged[:12]}: canonicals/static.yaml: its result does not record advancing the canonical "
        f"to {PR[:12]}",
    ]


def test_a_committed_verdict_may_be_finished_but_never_changed(history: History) -> None:
    history.cold_run(run_id(1), V1, promote=True)
    finished = result_doc(run_id(1), "pass", V1, advanced=True)
    finished.housekeeping = {"status": "failed", "error": "teardown of static-000001 failed"}
    history.result(finished, suffix="housekeeping failed")  # the second commit: fine
    history.result(result_doc(run_id(2), "running"))
    history.result(result_doc(run_id(2), "fail"))
    # The controller's own identity and message, turning a committed fail into a pass.
    flipped = history.result(result_doc(run_id(2), "pass"), suffix="housekeeping done")
    report = audit(history.root)
    assert sentences(report) == [
        f"commit {flipped[:12]}: {result_rel(run_id(2))}: changes the committed verdict of run "
        f"{run_id(2)} from fail to pass"]


def test_the_controller_identity_is_ccci_yaml_at_each_commit(history: History) -> None:
    history.cold_run(run_id(1), V1, promote=True)  # as ccci@test.invalid
    renamed = SETTINGS_HEAD.replace("ccci@test.invalid", "ci@new.invalid") + "recipes: {}\n"
    history.commit({"ccci.yaml": renamed}, "the controller's new address", by=PERSON)
    stale = history.result(result_doc(run_id(2), "running"))  # a controller still on the old address
    history.result(result_doc(run_id(2), "pass"), by=identity("ci@new.invalid"))
    # A ccci.yaml that does not load leaves the identity as it was (the controller keeps its
    # last good settings while the file is broken).
    history.commit({"ccci.yaml": "base_domain: [not, a, domain]\n"}, "broken settings", by=PERSON)
    history.result(result_doc(run_id(3), "rejected"), label="reject", by=identity("ci@new.invalid"))
    assert sentences(audit(history.root)) == [
        f"commit {stale[:12]}: {result_rel(run_id(2))}: a result authored by ccci-test <ccci@test.invalid>, "
        "not the controller <ci@new.invalid>",
    ]


def test_first_parent_merges_count_only_what_they_change_against_the_branch(history: History) -> None:
    history.cold_run(run_id(1), V1, promote=False)
    base = helpers.git(history.root, "rev-parse", "HEAD")
    helpers.git(history.root, "checkout", "-qb", "settings-pr")
    history.commit({"ccci.yaml": SETTINGS_HEAD.replace("max_tests: 0", "max_tests: 1") + "recipes: {}\n"},
                   "reviewed settings change", by=PERSON)
    helpers.git(history.root, "checkout", "-q", "main")
    history.cold_run(run_id(2), V1, promote=False)  # the controller goes on meanwhile
    # A reviewed pull request merged into the branch: nothing of the controller's is blamed on it.
    helpers.git(history.root, "merge", "-q", "--no-ff", "-m", "merge settings-pr", "settings-pr")
    assert sentences(audit(history.root)) == []
    # A merge that slips a result in (it differs from the first parent there) is named.
    helpers.git(history.root, "checkout", "-qb", "sneaky", base)
    history.result(result_doc(run_id(3), "pass"), by=PERSON)
    helpers.git(history.root, "checkout", "-q", "main")
    helpers.git(history.root, "merge", "-q", "--no-ff", "-m", "merge sneaky", "sneaky")
    merge = helpers.git(history.root, "rev-parse", "HEAD")
    assert sentences(audit(history.root)) == [
        f"commit {merge[:12]}: {result_rel(run_id(3))}: a result authored by {HUMAN}, "
        "not the controller <ccci@test.invalid>",
    ]


def test_audit_reads_results_in_one_pass_however_long_the_history(history: History) -> None:
    def git_calls() -> int:
        before = gitmod.operations_count()
        assert sentences(audit(history.root)) == []
        return gitmod.operations_count() - before

    history.cold_run(run_id(0), V1, promote=False)
    short = git_calls()
    for n in range(1, 60):
        history.cold_run(run_id(n), V1, promote=False)
    assert audit(history.root).commits >= 120
    assert git_calls() == short  # one log pass, plus reads per ccci.yaml and canonical change only
