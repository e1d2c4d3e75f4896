"""The rewarms this host owes: a recipe it keeps warm (`recipes.<r>.warm_hosts`, or the host
that ran the promoting cold) whose snapshot here is not at the known-good gets one rewarm per
known-good. The host that promoted queues its own rewarm at once (the rewarm queue sink); the
other keepers find the new known-good here, on their next pass."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from controller.flows.context import Context
from controller.flows.fleet.placement import host_of_result, keeps_warm, own_index
from controller.flows.rewarm import queue_rewarm
from controller.flows.warm_apps import read_warm_state
from controller.registry.documents import read_result
from controller.util import names
from controller.util.errors import CcciError

log = logging.getLogger(__name__)


def queue_owed_rewarms(ctx: Context) -> list[str]:
    """Queue a rewarm of each recipe this host keeps warm and holds no current snapshot of,
    unless one for that known-good was already tried here; the recipes queued. Each pass: a
    canonical read per recipe, more only for the recipes this host keeps warm."""
    queued = []
    for recipe in sorted(ctx.settings.recipes):
        app = names.warm_app(recipe)
        try:
            current = ctx.registry.canonical(recipe)
            if current is None or ctx.state.rewarm_request(recipe).exists():
                continue
            promoted_on = None
            if not ctx.settings.recipes[recipe].warm_hosts:
                promoted_on = _host_of_run(ctx.registry.root, current.promoted_by_run)
            if not keeps_warm(ctx.settings, recipe, ctx.host, promoted_on):
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


@functools.lru_cache(maxsize=4096)
def _host_of_run(root: Path, run_id: str) -> str | None:
    """The host a finished run ran on (a result's host never changes: read each once)."""
    rel = names.result_rel(run_id)
    path = root / rel
    return host_of_result(read_result(path, rel)) if path.is_file() else None
