"""Reports to the forge that must arrive exactly once and in order: a queue of files in the state
dir, delivered oldest first, retried with back-off through outages, resumed after a restart.

A status is idempotent on the forge (the last one per context wins), so sending it twice is
harmless; a comment is not, so each carries a marker and is posted only when the PR does not
show that marker yet. Reports of one PR never overtake each other: while one waits, the later
ones wait behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controller.forge import ForgeClient
from controller.util.alerts import clear_alert, raise_alert
from controller.util.errors import ExternalError
from controller.util.files import atomic_write_json, read_json
from controller.util.locks import exclusive_if_free
from controller.util.paths import StateDir
from controller.util.timeutil import now_iso

log = logging.getLogger(__name__)

DOWN_ALERT = "forge-down"
DROPPED_ALERT = "forge-report-dropped"
FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 600.0

# Set whenever a report is queued, so a delivering thread wakes at once.
QUEUED = threading.Event()


@dataclass
class Report:
    key: str  # one report of one thing: status-<run>-pending, status-<run>-final, comment-<run>, reply-<id>
    repo: str  # owner/name
    pr: int
    kind: str  # status | comment
    seq: int = field(default_factory=time.time_ns)  # delivery order
    sha: str | None = None  # status
    state: str | None = None
    context: str | None = None
    description: str | None = None
    target_url: str | None = None
    body: str | None = None  # comment, carrying `marker`
    marker: str | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0

    @property
    def file_name(self) -> str:
        return f"{self.seq:020d}-{self.key}.json"


def _path(state: StateDir, report: Report) -> Path:
    return state.forge_outbox / report.file_name


def queued(state: StateDir) -> list[Report]:
    """Every report not yet delivered, oldest first."""
    out = []
    for path in sorted(state.forge_outbox.glob("*.json")) if state.forge_outbox.is_dir() else []:
        doc = read_json(path)
        if isinstance(doc, dict):
            try:
                out.append(Report(**doc))
            except TypeError:
                log.warning("forge outbox: unreadable report %s left aside", path.name)
    return out


def enqueue(state: StateDir, report: Report, *, supersedes: str | None = None) -> None:
    """Queue `report` unless one with its key is already queued; drop the queued report
    `supersedes` names (a pending status nobody needs once the verdict's is queued)."""
    present = {r.key: r for r in queued(state)}
    if supersedes and supersedes in present:
        _path(state, present[supersedes]).unlink(missing_ok=True)
    if report.key in present:
        return
    atomic_write_json(_path(state, report), asdict(report))
    QUEUED.set()


def backoff(attempts: int) -> float:
    return float(min(FIRST_BACKOFF_S * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S))


@dataclass
class DrainReport:
    delivered: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def deliver(client: ForgeClient, report: Report) -> None:
    if report.kind == "status":
        assert report.sha and report.state and report.context
        client.set_status(report.repo, report.sha, state=report.state, context=report.context,
                          description=report.description or "", target_url=report.target_url)
        return
    assert report.body is not None and report.marker
    # Posted before a crash that forgot it? The PR says so: never twice.
    if any(report.marker in comment.body for comment in client.pr_comments(report.repo, report.pr)):
        return
    client.create_comment(report.repo, report.pr, report.body)


def drain(state: StateDir, client: ForgeClient, *, now: float | None = None) -> DrainReport:
    """Deliver what is due, oldest first; one delivering process at a time per state dir."""
    result = DrainReport()
    with exclusive_if_free(state.forge_outbox_lock) as mine:
        if not mine:
            return result
        blocked: set[tuple[str, int]] = set()
        for report in queued(state):
            pr = (report.repo.casefold(), report.pr)
            moment = time.time() if now is None else now
            if pr in blocked or report.next_attempt_at > moment:
                blocked.add(pr)
                result.waiting.append(report.key)
                continue
            try:
                deliver(client, report)
            except ExternalError as exc:
                _failed(state, report, exc, moment, result)
                if exc.temporary:
                    blocked.add(pr)
                continue
            _path(state, report).unlink(missing_ok=True)
            result.delivered.append(report.key)
            _health(state, last_success_at=now_iso(), last_error=None)
            clear_alert(state, DOWN_ALERT)
    return result


def _failed(state: StateDir, report: Report, exc: ExternalError, moment: float, result: DrainReport) -> None:
    if not exc.temporary:
        # The forge refused it (a repository gone, a commit it does not know): it never will.
        _path(state, report).unlink(missing_ok=True)
        result.dropped.append(report.key)
        raise_alert(state, DROPPED_ALERT, f"a report to {report.repo}#{report.pr} ({report.key}) was "
                                          f"refused and dropped: {exc.message}")
        return
    report.attempts += 1
    report.next_attempt_at = moment + backoff(report.attempts)
    atomic_write_json(_path(state, report), asdict(report))
    result.waiting.append(report.key)
    _health(state, last_error=exc.message[:500], last_error_at=now_iso())
    raise_alert(state, DOWN_ALERT, f"the forge did not take a report ({report.attempts} attempts; "
                                   f"queued reports wait and are retried): {exc.message}")


def _health(state: StateDir, **fields: Any) -> None:
    doc = read_json(state.forge_health, {})
    doc = doc if isinstance(doc, dict) else {}
    doc.update(fields)
    atomic_write_json(state.forge_health, doc)


def health(state: StateDir) -> dict[str, Any]:
    """For `ccci status`: the last delivery, the last error, and what is queued."""
    doc = read_json(state.forge_health, {})
    doc = dict(doc) if isinstance(doc, dict) else {}
    reports = queued(state)
    doc["queued"] = len(reports)
    doc["oldest_queued_seq"] = reports[0].seq if reports else None
    return doc
