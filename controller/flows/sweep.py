"""The nightly cold sweep: file cold requests for the head of each tracked line,
stalest recipe first, after rolling the live-warm infra — once per fleet: the requests and
`sweep/last.yaml` (when, by which host) go in one commit, and a host whose commit finds a
sweep of the same night recorded first files nothing (the claim protocol's push race)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from controller.flows.context import Context
from controller.registry import recipes
from controller.registry.documents import Request
from controller.registry.index import ResultsIndex
from controller.registry.settings import Settings
from controller.util import names
from controller.util.errors import BadInput, CcciError
from controller.util.files import write_whole
from controller.util.timeutil import iso, new_run_id, parse_iso, utcnow
from controller.util.yamlio import dump_document, read_untrusted

log = logging.getLogger(__name__)
SWEEPER = "sweep"


def _zone(name: str) -> dt.tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadInput(f"ccci.yaml: at 'sweep.timezone': {name!r} is not a known time zone") from exc


def last_scheduled(now: dt.datetime, at: str, timezone: str) -> dt.datetime:
    """The most recent `at` (HH:MM in `timezone`) at or before `now`."""
    zone = _zone(timezone)
    local = now.astimezone(zone)
    hour, minute = (int(part) for part in at.split(":"))
    slot = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if slot > local:
        slot -= dt.timedelta(days=1)
    return slot.astimezone(dt.UTC)


def sweep_due(now: dt.datetime, last: dt.datetime | None, at: str, timezone: str) -> bool:
    """Due when the last sweep is older than the latest scheduled slot (which also covers
    'at start-up when the last sweep is older than a day')."""
    if last is None:
        return True
    return last < last_scheduled(now, at, timezone) or now - last > dt.timedelta(days=1)


def plan(settings: Settings, last_cold: dict[str, str]) -> list[str]:
    """Pure: recipes to sweep, stalest first (never swept before come first), at most max_tests."""
    names = sorted(settings.recipes)
    if settings.sweep.order == "stalest-first":
        names.sort(key=lambda name: (last_cold.get(name) or "", name))
    return names[: settings.sweep.max_tests]


@dataclass
class SweepReport:
    filed: list[str]
    skipped: dict[str, str]
    swept_by: str | None = None  # another host, when its sweep of this night came first


RECORD_MAX_BYTES = 64 * 1024


def read_record(root: Path) -> dict[str, Any] | None:
    """`sweep/last.yaml` of a registry checkout: {at, host, filed}, or None (never swept, or
    unreadable — then the local ledger decides, as before the fleet)."""
    path = root / names.SWEEP_RECORD_REL
    if path.is_symlink() or not path.is_file():
        return None
    try:
        doc = read_untrusted(path, names.SWEEP_RECORD_REL, max_bytes=RECORD_MAX_BYTES)
        if isinstance(doc, dict):
            parse_iso(str(doc["at"]))
            return doc
    except (CcciError, KeyError, ValueError) as exc:
        log.warning("%s unreadable: %s", names.SWEEP_RECORD_REL, getattr(exc, "message", exc))
    return None


def last_fleet_sweep(root: Path) -> dt.datetime | None:
    """When any host of the fleet last filed a sweep, by the registry."""
    record = read_record(root)
    return parse_iso(str(record["at"])) if record else None


def last_cold_results(ctx: Context) -> dict[str, str]:
    """{recipe: when its last cold run finished}, from the results index (not the history)."""
    index = ResultsIndex(ctx.registry, ctx.state.results_index(ctx.registry.root)).refresh()
    return {recipe: str(entry["last_cold_finished_at"]) for recipe, entry in index.recipes.items()
            if entry.get("last_cold_finished_at")}


def run_sweep(ctx: Context, *, forced: bool = False) -> SweepReport:
    """Roll the live-warm infra, then file one cold request per recipe head, with the fleet's
    record, in one commit — unless another host's sweep of this night got there first
    (`forced`, as `ccci sweep --now`: file all the same)."""
    started = utcnow()
    report = SweepReport([], {})
    if ctx.settings.warm.keycloak.mode == "managed":
        from controller.flows import keycloak

        try:
            keycloak.reconcile(ctx)
        except CcciError as exc:
            log.error("sweep: live-warm Keycloak reconcile failed: %s", exc.message)
    requests: list[Request] = []
    for name in plan(ctx.settings, last_cold_results(ctx)):
        recipe = ctx.settings.recipes[name]
        try:
            recipes.fetch_recipe(ctx.state, recipe)
            head = recipes.head_of_line(ctx.state, recipe)
        except CcciError as exc:
            report.skipped[name] = exc.message
            continue
        if head is None:
            report.skipped[name] = f"no tracked line {recipe.track!r}"
            continue
        requests.append(Request(run_id=new_run_id(name), recipe=name, ref=head, mode="cold",
                                requested_by=SWEEPER, trigger="nightly sweep"))
    if requests:
        _file_once(ctx, requests, started, forced, report)
    log.info("sweep filed %d requests (%s skipped)", len(report.filed), len(report.skipped))
    return report


def _file_once(ctx: Context, requests: list[Request], started: dt.datetime, forced: bool,
               report: SweepReport) -> None:
    """One commit: the requests and `sweep/last.yaml`; nothing when, on the fresh look the
    commit takes, the record says another host already swept since this sweep was due."""
    sweep_settings = ctx.settings.sweep

    def write(root: Path) -> list[str] | None:
        record = read_record(root)
        if record is not None and not forced:
            last = parse_iso(str(record["at"]))
            if not sweep_due(started, last, sweep_settings.at, sweep_settings.timezone):
                report.swept_by = str(record.get("host") or "another host")
                return None
        touched = []
        for request in requests:
            rel = request.rel_path
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            write_whole(root / rel, dump_document(request.to_document()))
            touched.append(rel)
        (root / names.SWEEP_DIR).mkdir(exist_ok=True)
        write_whole(root / names.SWEEP_RECORD_REL, dump_document(
            {"at": iso(started), "host": ctx.host, "filed": [r.run_id for r in requests]}))
        return [*touched, names.SWEEP_RECORD_REL]

    message = f"[sweep] {len(requests)} cold requests by {ctx.host} (" + ", ".join(
        f"{r.recipe}@{r.ref[:7]}" for r in requests[:10]) + (", …" if len(requests) > 10 else "") + ")"
    if ctx.registry.transact(write, message) is not None:
        report.filed = [r.run_id for r in requests]
    elif report.swept_by:
        log.info("sweep: %s filed this night's sweep first; nothing filed here", report.swept_by)
