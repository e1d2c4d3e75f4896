"""From a request file to a final result: validate, authorise, decide the mode, claim, run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from controller.flows import cold, quick
from controller.flows.context import Context
from controller.registry import documents
from controller.registry.documents import Request
from controller.registry.results import RunResult
from controller.util.errors import BadInput, CcciError
from controller.util.log import run_context
from controller.util.timeutil import now_iso

log = logging.getLogger(__name__)

# A runner takes a claimed run to its verdict, filling in `result` as it goes.
Runner = Callable[[Context, Request, RunResult], None]


@dataclass(frozen=True)
class Decision:
    mode: str  # what will run: cold | quick
    fallback: str | None = None


def _runners() -> dict[str, Runner]:
    return {"cold": cold.run_cold, "quick": quick.run_quick}


def decide(ctx: Context, request: Request) -> Decision:
    """Authority and mode; raises BadInput for a request that must be rejected."""
    settings = ctx.settings
    if not settings.authority.allows(request.mode, request.requested_by):
        rule = f"authority.{request.mode}"
        raise BadInput(
            f"{request.rel_path}: at 'requested_by': {request.requested_by!r} is not allowed by "
            f"{rule} in ccci.yaml"
        )
    if request.recipe not in settings.recipes:
        raise BadInput(
            f"{request.rel_path}: at 'recipe': {request.recipe!r} is not configured under "
            "'recipes' in ccci.yaml"
        )
    if request.mode == "quick":
        canonical = ctx.registry.canonical(request.recipe)
        has_snapshot = quick.snapshot_matches_index(ctx, request.recipe)
        if canonical is None or not has_snapshot:
            missing = "canonical" if canonical is None else "last-known-good snapshot on this host"
            if settings.quick.no_canonical == "reject":
                raise BadInput(
                    f"{request.rel_path}: at 'mode': quick needs a {missing} for "
                    f"{request.recipe!r} and quick.no_canonical is reject"
                )
            return Decision("cold", fallback="no-canonical")
    return Decision(request.mode)


def new_result(ctx: Context, request: Request, decision: Decision) -> RunResult:
    return RunResult(
        run=request.run_id,
        recipe=request.recipe,
        ref=request.ref,
        mode=decision.mode,
        requested_mode=request.mode,
        fallback=decision.fallback,
        gating=decision.mode == "cold",
        outcome="running",
        started_at=now_iso(),
        requested_by=request.requested_by,
        pr=request.pr,
        controller=ctx.controller_id,
    )


def rejection(ctx: Context, file_name: str, error: CcciError, request: Request | None,
              outcome: str = "rejected") -> RunResult:
    """The result for a request that never runs."""
    run_id = documents.result_id_for(file_name)
    now = now_iso()
    return RunResult(
        run=run_id,
        recipe=request.recipe if request else None,
        ref=request.ref if request else None,
        mode=None,
        requested_mode=request.mode if request else None,
        outcome=outcome,
        cause=None if outcome == "rejected" else "infra",
        gating=bool(request and request.mode == "cold"),
        started_at=now,
        finished_at=now,
        error=error.message,
        requested_by=request.requested_by if request else None,
        pr=request.pr if request else None,
        controller=ctx.controller_id,
    )


def reject(ctx: Context, file_name: str, error: CcciError, request: Request | None = None,
           *, outcome: str = "rejected") -> bool:
    """Commit a rejection unless someone else already answered this request."""
    result = rejection(ctx, file_name, error, request, outcome)
    with run_context(result.run):
        log.info("rejected %s: %s", file_name, error.message)
        return ctx.registry.write_result(result, only_if_unclaimed=True) is not None


def run_claimed(ctx: Context, request: Request, result: RunResult) -> RunResult:
    """Run a claimed request to its verdict; never raises for a run's own failure."""
    runner = _runners().get(result.mode or "")
    with run_context(request.run_id):
        try:
            if runner is None:
                raise CcciError(f"mode {result.mode!r} has no runner in this controller yet",
                                cause="infra")
            runner(ctx, request, result)
        except BadInput as exc:
            result.outcome = "rejected"
            result.error = exc.message
        except CcciError as exc:
            if result.outcome in ("running", "pass"):
                result.outcome = "error" if exc.cause in (None, "infra") else "fail"
            result.cause = result.cause or exc.cause or "infra"
            result.error = result.error or exc.message
            log.warning("run ended: %s", exc.message)
        except Exception as exc:  # the daemon keeps serving whatever a run does
            log.exception("unexpected error in run")
            result.outcome = "error"
            result.cause = result.cause or "infra"
            result.error = result.error or f"unexpected error: {type(exc).__name__}: {exc}"
        if result.outcome == "running":
            result.outcome = "error"
            result.cause = "infra"
            result.error = "the run ended without a verdict"
        result.finished_at = now_iso()
        return result
