"""The nightly cold sweep: file cold requests for the head of each tracked line,
stalest recipe first, after rolling the live-warm infra."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from controller.flows.context import Context
from controller.registry import recipes
from controller.registry.documents import Request
from controller.registry.index import ResultsIndex
from controller.registry.settings import Settings
from controller.util.errors import BadInput, CcciError
from controller.util.timeutil import new_run_id

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


def last_cold_results(ctx: Context) -> dict[str, str]:
    """{recipe: when its last cold run finished}, from the results index (not the history)."""
    index = ResultsIndex(ctx.registry, ctx.state.results_index(ctx.registry.root)).refresh()
    return {recipe: str(entry["last_cold_finished_at"]) for recipe, entry in index.recipes.items()
            if entry.get("last_cold_finished_at")}


def run_sweep(ctx: Context) -> SweepReport:
    """Roll the live-warm infra, then file one cold request per recipe head."""
    report = SweepReport([], {})
    if ctx.settings.warm.keycloak.mode == "managed":
        from controller.flows import keycloak

        try:
            keycloak.reconcile(ctx)
        except CcciError as exc:
            log.error("sweep: live-warm Keycloak reconcile failed: %s", exc.message)
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
        request = Request(run_id=new_run_id(name), recipe=name, ref=head, mode="cold",
                          requested_by=SWEEPER, trigger="nightly sweep")
        ctx.registry.file_request(request, label="sweep")
        report.filed.append(request.run_id)
    log.info("sweep filed %d requests (%s skipped)", len(report.filed), len(report.skipped))
    return report
