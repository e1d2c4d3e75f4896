"""The run result document and its commit message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Phase:
    name: str
    status: str  # ok | failed | skipped
    seconds: float


@dataclass
class AssertOutcome:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class RunResult:
    run: str
    recipe: str | None
    ref: str | None
    mode: str | None  # what actually ran: cold | quick | upgrade | rewarm; None when nothing ran
    requested_mode: str | None
    outcome: str
    started_at: str
    # When the asserts had decided (the verdict commit); finished_at: when the housekeeping after
    # it (teardown, restore) was done, written by a later commit. Equal when nothing followed.
    verdict_at: str | None = None
    finished_at: str | None = None
    fallback: str | None = None
    gating: bool = True
    cause: str | None = None  # recipe | infra | timeout, when the run failed or errored
    error: str | None = None
    requested_by: str | None = None
    pr: int | None = None
    app: str | None = None
    controller: str | None = None  # host:pid of the controller that wrote it
    host: str | None = None  # the CI host (--host) the run is placed on
    deadline: str | None = None  # a claim's: after it, another host may mark the run aborted
    phases: list[Phase] = field(default_factory=list)
    asserts: list[AssertOutcome] = field(default_factory=list)
    canonical: dict[str, Any] = field(
        default_factory=lambda: {"before": None, "after": None, "advanced": False}
    )
    snapshot: dict[str, Any] = field(default_factory=lambda: {"restored": False, "verified": None})
    sso: dict[str, Any] | None = None
    lock: dict[str, Any] | None = None  # warm runs: when the app lock was taken and given back
    upgrade: dict[str, Any] | None = None  # quick runs: the commits upgraded from and to
    # Upgrade runs: a row per release tag upgraded from (from, from_commit, verdict, cause, …).
    matrix: list[dict[str, Any]] | None = None
    policy: dict[str, Any] | None = None  # what the stack asks of the host: asks, added, granted
    # What the request asked beyond the fields above (the verdict consumes the request file).
    trigger: str | None = None
    forge: dict[str, Any] | None = None
    # After the verdict: {"status": "done" | "failed" | "recovered", "error": …}; never the verdict.
    housekeeping: dict[str, Any] | None = None
    follow_up: str | None = None  # a failed quick run: the run id of the cold request it filed
    follow_up_of: str | None = None  # that cold run: the quick run it follows up
    # Not written: set by a green cold run whose commit may become known-good.
    promote: bool = False

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "run": self.run,
            "recipe": self.recipe,
            "ref": self.ref,
            "mode": self.mode,
            "requested_mode": self.requested_mode,
            "fallback": self.fallback,
            "gating": self.gating,
            "outcome": self.outcome,
            "cause": self.cause,
            "error": self.error,
            "requested_by": self.requested_by,
            "pr": self.pr,
            "app": self.app,
            "controller": self.controller,
            "host": self.host,
            "deadline": self.deadline,
            "started_at": self.started_at,
            "verdict_at": self.verdict_at,
            "finished_at": self.finished_at,
            "phases": [
                {"name": p.name, "status": p.status, "seconds": round(p.seconds, 2)}
                for p in self.phases
            ],
            "asserts": [{"name": a.name, "ok": a.ok, "detail": a.detail} for a in self.asserts],
            "canonical": dict(self.canonical),
            "snapshot": dict(self.snapshot),
        }
        if self.sso is not None:
            doc["sso"] = dict(self.sso)
        if self.lock is not None:
            doc["lock"] = dict(self.lock)
        if self.upgrade is not None:
            doc["upgrade"] = dict(self.upgrade)
        if self.matrix is not None:
            doc["matrix"] = [dict(row) for row in self.matrix]
        if self.policy is not None:
            doc["policy"] = dict(self.policy)
        if self.trigger is not None:
            doc["trigger"] = self.trigger
        if self.forge is not None:
            doc["forge"] = dict(self.forge)
        if self.housekeeping is not None:
            doc["housekeeping"] = dict(self.housekeeping)
        if self.follow_up is not None:
            doc["follow_up"] = self.follow_up
        if self.follow_up_of is not None:
            doc["follow_up_of"] = self.follow_up_of
        return doc


def commit_message(result: RunResult, *, label: str, extra: str = "") -> str:
    """`[cold] notes@3f2a1b2 pass (run …)`; the first line is what `git log` shows."""
    ref = (result.ref or "")[:7] or "?"
    recipe = result.recipe or "?"
    head = f"[{label}] {recipe}@{ref} {result.outcome} (run {result.run})"
    if extra:
        head += f"; {extra}"
    body = f"\n\n{result.error}" if result.error and result.outcome != "running" else ""
    return head + body
