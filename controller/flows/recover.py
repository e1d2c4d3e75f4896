"""Start-up recovery: abort runs a dead controller left in flight, tear down their leftovers."""

from __future__ import annotations

import logging
from pathlib import Path

from controller.flows import cleanup, keycloak
from controller.flows.context import Context
from controller.registry.results import RunResult
from controller.runtime import stack
from controller.util import inflight
from controller.util.alerts import raise_alert as _raise_alert
from controller.util.errors import CcciError
from controller.util.files import write_durably
from controller.util.log import run_context
from controller.util.paths import StateDir
from controller.util.timeutil import now_iso

log = logging.getLogger(__name__)


def raise_alert(state: StateDir, key: str, message: str) -> Path:
    return _raise_alert(state, key, message)


def abort_result(ctx: Context, run_id: str, existing: dict[str, object]) -> RunResult:
    """The final result of a run the controller lost: outcome aborted, says why."""
    def text(key: str) -> str | None:
        value = existing.get(key)
        return str(value) if value is not None else None

    mode = text("mode")
    return RunResult(
        run=run_id,
        recipe=text("recipe"),
        ref=text("ref"),
        mode=mode,
        requested_mode=text("requested_mode"),
        fallback=text("fallback"),
        gating=bool(existing.get("gating", mode == "cold")),
        outcome="aborted",
        cause="infra",
        started_at=text("started_at") or now_iso(),
        finished_at=now_iso(),
        error=(
            "the controller stopped while this run was in flight; its objects were torn down "
            f"at the next start-up ({ctx.controller_id}); request it again to re-run"
        ),
        requested_by=text("requested_by"),
        pr=existing.get("pr") if isinstance(existing.get("pr"), int) else None,  # type: ignore[arg-type]
        app=text("app"),
        controller=ctx.controller_id,
    )


def abort_orphaned_runs(ctx: Context) -> list[str]:
    """Every marker whose process died: commit an `aborted` result if it still says running."""
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
            if marker.data.get("mode") in ("quick", "rewarm") and marker.data.get("recipe"):
                _undeploy_warm(f"warm-{marker.data['recipe']}")
            if existing is not None and existing.get("outcome") == "running":
                result = abort_result(ctx, run_id, existing)
                ctx.registry.write_result(result)
                aborted.append(run_id)
                log.warning("aborted orphaned run %s", run_id)
            inflight.forget(ctx.state, marker)
    return aborted


def _undeploy_warm(app: str) -> None:
    """A warm run died mid-way: take its app down; the volume stays dirty, so the next warm
    run restores the last-known-good first."""
    try:
        stack.undeploy(app, remove_volumes=False)
    except CcciError as exc:
        log.error("could not undeploy %s left by a dead run: %s", app, exc.message)


def recover_at_start(ctx: Context) -> None:
    """Finish or undo what a killed controller left behind (DESIGN §8)."""
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


def queue_rewarm(ctx: Context, recipe: str) -> None:
    """Ask for a rewarm of `warm-<recipe>`; the serve loop runs queued rewarms."""
    write_durably(ctx.state.rewarm_request(recipe), now_iso().encode())


def queued_rewarms(ctx: Context) -> list[str]:
    queue = ctx.state.queue
    if not queue.is_dir():
        return []
    return sorted(p.name.removeprefix("rewarm-") for p in queue.glob("rewarm-*")
                  if p.name.removeprefix("rewarm-") in ctx.settings.recipes)


def dequeue_rewarm(ctx: Context, recipe: str) -> None:
    ctx.state.rewarm_request(recipe).unlink(missing_ok=True)
