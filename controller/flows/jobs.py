"""`serve`'s periodic work as one table: when each job is due and what it does. When each last
ran is kept in the state dir, so a restarted daemon catches up what it missed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.flows import keycloak, prune, sweep
from controller.flows.context import Context
from controller.util.errors import CcciError
from controller.util.files import atomic_write_json, read_json
from controller.util.paths import StateDir
from controller.util.timeutil import iso, parse_iso, utcnow

log = logging.getLogger(__name__)

# The disk is checked at most this often between due prunes (statvfs and an engine call).
DISK_CHECK_S = 60.0


@dataclass(frozen=True)
class Job:
    name: str
    # due(ctx, now, last run or None, once): whether to run on this pass.
    due: Callable[[Context, dt.datetime, dt.datetime | None, bool], bool]
    # Does the work; returns a small summary for the ledger, the heartbeat and `ccci status`.
    run: Callable[[Context], dict[str, Any]]
    background: bool = False  # runs in its own thread (the sweep fetches every recipe)


def _sweep_due(ctx: Context, now: dt.datetime, last: dt.datetime | None, once: bool) -> bool:
    # --once drains the queue; it does not start the nightly sweep. Any host's sweep counts.
    return not once and sweep.sweep_due(now, latest(last, sweep.last_fleet_sweep(ctx.registry.root)),
                                        ctx.settings.sweep.at, ctx.settings.sweep.timezone)


def latest(*moments: dt.datetime | None) -> dt.datetime | None:
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def _sweep(ctx: Context, forced: bool = False) -> dict[str, Any]:
    report = sweep.run_sweep(ctx, forced=forced)
    summary: dict[str, Any] = {"filed": report.filed, "skipped": report.skipped}
    if report.swept_by:
        summary["swept_by"] = report.swept_by
    return summary


def forced_sweep() -> Job:
    """`ccci sweep --now`: the sweep job, filing even when another host swept tonight."""
    return dataclasses.replace(job("sweep"), run=functools.partial(_sweep, forced=True))


def prune_due(since_s: float | None, interval_s: float, once: bool, disk_is_low: Callable[[], bool]) -> bool:
    """Every `interval_s` (not with --once), and whenever the disk is low — at most once a
    minute either way. `since_s`: seconds since the last prune, None when there was none."""
    if since_s is not None and since_s < DISK_CHECK_S:
        return False
    if not once and (since_s is None or since_s >= interval_s):
        return True
    return disk_is_low()


def _prune_due(ctx: Context, now: dt.datetime, last: dt.datetime | None, once: bool) -> bool:
    return prune_due((now - last).total_seconds() if last is not None else None,
                     ctx.settings.limits.prune_interval_s, once,
                     lambda: bool(prune.disk_low(prune.free_space(ctx.state), ctx.settings.limits.disk_min_free_gb)))


def _prune(ctx: Context) -> dict[str, Any]:
    report = prune.prune_and_alert(ctx.state, prune.policy_from_settings(ctx.settings))
    return {"removed": sum(1 for item in report.removed if item.removed), "failed": len(report.failed),
            "skipped": report.skipped}


def every(seconds: Callable[[Context], float], *, needs_keycloak: bool = False) -> Callable[
        [Context, dt.datetime, dt.datetime | None, bool], bool]:
    """Due every `seconds(ctx)` (at start too), not with --once."""

    def due(ctx: Context, now: dt.datetime, last: dt.datetime | None, once: bool) -> bool:
        if once or (needs_keycloak and ctx.settings.warm.keycloak.mode == "off"):
            return False
        return last is None or (now - last).total_seconds() >= seconds(ctx)

    return due


def _reap(ctx: Context) -> dict[str, Any]:
    return {"reaped": keycloak.reap_stale_realms(ctx)}


def _reconcile(ctx: Context) -> dict[str, Any]:
    report = keycloak.reconcile(ctx)
    return {"outcome": report.outcome, "message": report.message}


JOBS: tuple[Job, ...] = (
    Job("sweep", _sweep_due, _sweep, background=True),
    Job("prune", _prune_due, _prune),
    # A realm leaked while serve runs goes without a restart; the live Keycloak is watched.
    Job("reap", every(lambda ctx: ctx.settings.serve.reap_interval_s, needs_keycloak=True), _reap),
    Job("reconcile", every(lambda ctx: ctx.settings.serve.reconcile_interval_s, needs_keycloak=True),
        _reconcile, background=True),
)


class Ledger:
    """`<state>/serve/jobs.json`: {job: {at, summary}}; shared by serve and the commands that
    run a job by hand (`ccci sweep --now` counts as the night's sweep)."""

    _lock = threading.Lock()

    def __init__(self, state: StateDir) -> None:
        self.state = state

    def _read(self) -> dict[str, Any]:
        doc = read_json(self.state.jobs, {})
        return doc if isinstance(doc, dict) else {}

    def entry(self, name: str) -> dict[str, Any] | None:
        entry = self._read().get(name)
        if entry is None and name == "sweep":
            entry = self._legacy_sweep()
        return entry if isinstance(entry, dict) else None

    def last_run(self, name: str) -> dt.datetime | None:
        entry = self.entry(name)
        try:
            return parse_iso(str(entry["at"])) if entry else None
        except (KeyError, ValueError):
            return None

    def record(self, name: str, at: dt.datetime, summary: dict[str, Any]) -> None:
        with self._lock:
            doc = self._read()
            doc[name] = {"at": iso(at), "summary": summary}
            atomic_write_json(self.state.jobs, doc)

    def _legacy_sweep(self) -> dict[str, Any] | None:
        """Before the job table, the sweep kept its last run in `<state>/sweep.json`."""
        old = read_json(self.state.legacy_sweep_file)
        if isinstance(old, dict) and isinstance(old.get("last_sweep_at"), str):
            return {"at": old["last_sweep_at"], "summary": {"filed": old.get("filed", [])}}
        return None


def run_job(ctx: Context, job: Job, ledger: Ledger) -> dict[str, Any]:
    """Run one job and record it, whatever happened: a job that failed is due again only when
    its own rule says so, not on every pass."""
    started = utcnow()
    try:
        summary = job.run(ctx)
    except CcciError as exc:
        log.error("%s failed: %s", job.name, exc.message)
        summary = {"error": exc.message}
    summary = {"at": iso(started), **summary}
    ledger.record(job.name, started, summary)
    return summary


def job(name: str) -> Job:
    return next(j for j in JOBS if j.name == name)
