"""Sacred teardown at start-up: every cold app whose run is not in flight goes."""

from __future__ import annotations

import logging

from controller.runtime import stack
from controller.util import inflight
from controller.util.errors import CcciError
from controller.util.paths import StateDir

log = logging.getLogger(__name__)


def stale_cold_apps(state: StateDir) -> dict[str, str]:
    """{app: run} for this controller's labelled cold apps whose run no live process holds."""
    live = inflight.in_flight_runs(state)
    owned = stack.labelled_apps("cold", owner=state.owner_id)
    return {app: facts.get("run", "") for app, facts in owned.items()
            if facts.get("run", "") not in live}


def remove_cold_app(app: str) -> None:
    """Everything of a cold app goes, its volumes too: cold data is never kept."""
    stack.undeploy(app, remove_volumes=True)


def teardown_cold_leftovers(state: StateDir) -> list[str]:
    removed = []
    for app, run in sorted(stale_cold_apps(state).items()):
        try:
            remove_cold_app(app)
            removed.append(app)
            log.warning("removed leftover cold app %s (run %s not in flight)", app, run or "?")
        except CcciError as exc:
            log.error("could not remove leftover cold app %s: %s", app, exc.message)
    return removed
