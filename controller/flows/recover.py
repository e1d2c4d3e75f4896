"""Start-up recovery: abort runs a dead controller left in flight, tear down their leftovers."""

from __future__ import annotations

import logging
from typing import Any

from controller.flows import cleanup, hot, keycloak, runs
from controller.flows.context import Context
from controller.flows.fleet.migrate import migrate_legacy_index
from controller.flows.warm_apps import app_lock_if_free
from controller.registry import recipes
from controller.runtime import stack
from controller.util import inflight, names
from controller.util.alerts import clear_alert, raise_alert
from controller.util.errors import CcciError
from controller.util.log import run_context

log = logging.getLogger(__name__)

WARM_MODES = ("quick", "rewarm")  # modes whose app is the recipe's warm app
THROWAWAY_MODES = ("cold", "upgrade")  # modes whose app is the run's own, removed with its volumes


def abort_orphaned_runs(ctx: Context) -> list[str]:
    """Every marker whose process died: publish an `aborted` verdict if it still says running;
    finish the housekeeping of one whose verdict was committed but not its `finished_at`."""
    aborted = []
    for marker in inflight.orphaned_markers(ctx.state):
        run_id = marker.run_id
        with run_context(run_id):
            if marker.data.get("registry") not in (None, str(ctx.registry.root)):
                continue  # another registry's run; its own controller recovers it
            try:
                existing = ctx.registry.result(run_id)
            except CcciError as exc:
                log.warning("cannot read the result of orphaned run %s: %s", run_id, exc.message)
                existing = None
            recipe = marker.data.get("recipe")
            if marker.data.get("mode") in WARM_MODES and isinstance(recipe, str):
                _undeploy_warm(ctx, names.warm_app(recipe))
            if existing is not None and existing.get("outcome") == "running":
                runs.abort(ctx, run_id, existing)
                aborted.append(run_id)
                log.warning("aborted orphaned run %s", run_id)
            elif existing is not None and not existing.get("finished_at"):
                _finish_housekeeping(ctx, run_id, existing)
            inflight.forget(ctx.state, marker)
    return aborted


def _finish_housekeeping(ctx: Context, run_id: str, existing: dict[str, Any]) -> None:
    """The run died after its verdict was committed, in its housekeeping: do what is left and
    record it, the verdict unchanged. A warm app was undeployed above; its volumes stay marked
    dirty, so the next warm run restores the last-known-good before it deploys. A throw-away app
    (cold, upgrade) goes with its volumes; its realm goes with the reaper."""
    app = existing.get("app")
    housekeeping: dict[str, Any] = {"status": "recovered", "by": ctx.controller_id}
    if existing.get("mode") in THROWAWAY_MODES and isinstance(app, str):
        try:
            cleanup.remove_cold_app(app)
        except CcciError as exc:
            housekeeping = {**housekeeping, "status": "failed", "error": exc.message}
            raise_alert(ctx.state, f"housekeeping-{app}", f"after the {existing.get('outcome')} verdict "
                        f"of run {run_id}, recovery could not remove {app}: {exc.message}")
    runs.finish_after_crash(ctx, run_id, existing, housekeeping)
    log.warning("finished the housekeeping of run %s after its %s verdict", run_id, existing.get("outcome"))


def _undeploy_warm(ctx: Context, app: str) -> None:
    """A warm run died mid-way: take its app down; the volume stays dirty, so the next warm
    run restores the last-known-good first. Not while a live run holds the app's lock: the app
    is that run's now (it cleared what the dead one left before it deployed)."""
    with app_lock_if_free(ctx.state, app) as free:
        if not free:
            log.info("not undeploying %s: a live run holds it", app)
            return
        try:
            hot.forget_hot(ctx.state, app)
            stack.undeploy(app, remove_volumes=False)
        except CcciError as exc:
            log.error("could not undeploy %s left by a dead run: %s", app, exc.message)


def check_sources(ctx: Context) -> dict[str, str]:
    """{recipe: why its source cannot be fetched}, as alerts (found at start, not by a run)."""
    problems = {}
    for name, recipe in sorted(ctx.settings.recipes.items()):
        problem = recipes.source_problem(recipe)
        if problem:
            problems[name] = problem
            raise_alert(ctx.state, f"recipe-source-{name}", problem)
        else:
            clear_alert(ctx.state, f"recipe-source-{name}")
    return problems


def recover_at_start(ctx: Context) -> None:
    """Finish or undo what a killed controller left behind; say what cannot work."""
    try:  # a single-host registry: this host's snapshot entries move under its name, once
        migrate_legacy_index(ctx)
    except CcciError as exc:
        log.error("snapshot index not migrated (will retry at the next start): %s", exc.message)
    check_sources(ctx)
    abort_orphaned_runs(ctx)
    _teardown_leftovers(ctx)
    try:
        reaped = keycloak.reap_stale_realms(ctx)
        if reaped:
            log.warning("reaped %d stale realms: %s", len(reaped), ", ".join(reaped))
    except CcciError as exc:
        log.error("realm reaper skipped: %s", exc.message)


def _teardown_leftovers(ctx: Context) -> None:
    try:
        cleanup.teardown_cold_leftovers(ctx.state)
    except CcciError as exc:
        # No engine reachable: serve still answers requests (rejections, errors) and retries.
        log.error("start-up teardown skipped: %s", exc.message)
