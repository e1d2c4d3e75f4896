"""The rewarms this host owes: a recipe it keeps warm (`recipes.<r>.warm_hosts`, or the host
that ran the promoting cold) whose snapshot here is not at the known-good gets one rewarm per
known-good. The host that promoted queues its own rewarm at once (the rewarm queue sink); the
other keepers find the new known-good here, on their next pass."""

from __future__ import annotations

import logging

from controller.flows.context import Context
from controller.flows.fleet.placement import keeps_warm, own_index
from controller.flows.rewarm import queue_rewarm
from controller.flows.warm_apps import read_warm_state
from controller.registry.index import ResultsIndex
from controller.util import names
from controller.util.errors import CcciError

log = logging.getLogger(__name__)


def queue_owed_rewarms(ctx: Context, index: ResultsIndex | None = None) -> list[str]:
    """Queue a rewarm of each recipe this host keeps warm and holds no current snapshot of,
    unless one for that known-good was already tried here; the recipes queued. Which recipes
    this host keeps warm comes from the results index (`index`, or the state dir's): per recipe
    its canonical and the promoting host, so a pass reads no canonical and no result of the
    recipes kept elsewhere. From there the registry decides: the canonical is read again."""
    if index is None:
        index = ResultsIndex(ctx.registry, ctx.state.results_index(ctx.registry.root))
    promoted = index.refresh().canonicals
    queued = []
    for recipe in sorted(ctx.settings.recipes):
        app = names.warm_app(recipe)
        if recipe not in promoted or ctx.state.rewarm_request(recipe).exists():
            continue
        if not keeps_warm(ctx.settings, recipe, ctx.host, promoted[recipe].get("host")):
            continue
        try:
            current = ctx.registry.canonical(recipe)
            if current is None:
                continue
            if read_warm_state(ctx.state, app).get("rewarm_of") == current.known_good:
                continue  # tried here (a failure stays failed until the known-good moves)
            mine = own_index(ctx, app)
            if mine is not None and mine.commit == current.known_good:
                continue
        except CcciError as exc:
            log.warning("cannot tell whether %s keeps %s warm: %s", ctx.host, app, exc.message)
            continue
        queue_rewarm(ctx, recipe)
        queued.append(recipe)
        log.info("%s keeps %s warm: rewarm queued for the known-good %s", ctx.host, app, current.known_good[:12])
    return queued
