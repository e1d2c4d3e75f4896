"""Sacred teardown at start-up: every cold app whose run is not in flight goes."""

from __future__ import annotations

import logging

from controller.flows.context import Context
from controller.runtime import stack
from controller.util import inflight
from controller.util.errors import CcciError

log = logging.getLogger(__name__)


def stale_cold_apps(ctx: Context) -> dict[str, str]:
    """{app: run} for labelled cold apps whose run no live process holds."""
    live = inflight.in_flight_runs(ctx.state)
    owned = stack.labelled_apps("cold", owner=ctx.state.owner_id)
    return {app: facts.get("run", "") for app, facts in owned.items()
            if facts.get("run", "") not in live}


def teardown_cold_leftovers(ctx: Context) -> list[str]:
    removed = []
    for app, run in sorted(stale_cold_apps(ctx).items()):
        try:
            stack.undeploy(app, remove_volumes=True)
            removed.append(app)
            log.warning("removed leftover cold app %s (run %s not in flight)", app, run or "?")
        except CcciError as exc:
            log.error("could not remove leftover cold app %s: %s", app, exc.message)
    return removed
