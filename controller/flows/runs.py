"""One run lifecycle: admit a request, claim it, run it through its mode, publish the verdict.

Every result the controller commits — claims, verdicts, rejections, aborts, rewarms — is
committed here and nowhere else. Publishing is the registry commit first (it is the truth,
and it carries the canonical or snapshot index the verdict moves), then every sink.

Verdict first: a run's verdict is committed and reported as soon as its asserts have decided
it; what the runner registered as housekeeping (teardown, restore, giving back the app lock)
runs after, and a second commit records `finished_at` and how the housekeeping went. The
verdict never changes after its commit; a housekeeping failure is an alert and a result field.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.flows import canonical, followup, modes
from controller.flows.context import Context, Publication, Run, Sink
from controller.flows.fleet import placement
from controller.flows.forge.authority import is_forge_rule
from controller.flows.forge.reporter import ForgeReporter
from controller.flows.rewarm import RewarmQueue, dequeue_rewarm
from controller.flows.warm_apps import app_lock, write_warm_state
from controller.registry import documents
from controller.registry.documents import Request, SnapshotIndex, snapshot_index_document
from controller.registry.index import ResultsIndex, brief_of
from controller.registry.results import RunResult, commit_message
from controller.registry.settings import Settings
from controller.registry.store import updated_text
from controller.util import inflight, names
from controller.util.alerts import clear_alert, raise_alert
from controller.util.errors import BadInput, CcciError, CheckFailed
from controller.util.files import write_whole
from controller.util.log import run_context
from controller.util.timeutil import new_run_id, now_iso, utcnow
from controller.util.yamlio import dump_document

log = logging.getLogger(__name__)

# Sinks every controller has (the forge reporter queues only when a forge is configured and
# the run came from a PR comment); `ctx.sinks` adds more.
BUILTIN_SINKS: tuple[Sink, ...] = (RewarmQueue(), ForgeReporter())
CONTROLLER_USER = "ccci"  # requested_by of the runs the controller starts itself


@dataclass(frozen=True)
class Decision:
    mode: str  # what will run
    fallback: str | None = None  # why it is not what was asked, when it is not


class NotPlacedHere(CcciError):
    """A request this host must leave pending: another host of the fleet takes it, or this one
    will once its queued rewarm is done (`waits_here`)."""

    def __init__(self, message: str, *, waits_here: bool) -> None:
        super().__init__(message)
        self.waits_here = waits_here


class Rejected(BadInput):
    """A request that must not run; its `rejected` result is committed (unless someone had
    already answered it)."""

    def __init__(self, cause: BadInput, *, committed: bool) -> None:
        super().__init__(cause.message)
        self.committed = committed



def decide(ctx: Context, request: Request) -> Decision:
    """Authority and mode, by the mode table; BadInput for a request that must be rejected."""
    settings = ctx.settings
    entry = modes.requestable(request.mode, where=f"{request.rel_path}: at 'mode'")
    refusal = authority_refusal(settings, entry.authority or entry.name, request)
    if refusal is not None:
        raise BadInput(refusal)
    if request.recipe not in settings.recipes:
        raise BadInput(
            f"{request.rel_path}: at 'recipe': {request.recipe!r} is not configured under "
            "'recipes' in ccci.yaml"
        )
    missing = entry.precondition(ctx, request.recipe) if entry.precondition else None
    unplaced = None
    if missing is None:
        if entry.placement is None:
            return Decision(entry.name)
        unplaced = _unplaced(ctx, request, entry.placement(ctx, request))
        if unplaced is None:
            return Decision(entry.name)
    fallback = entry.fallback
    if fallback is None or not fallback.allowed(settings):
        policy = f" and {fallback.setting} is {fallback.read(settings)}" if fallback else ""
        needs = (f"no host of the fleet can take it: {unplaced}" if unplaced
                 else f"{entry.name} needs a {missing} for {request.recipe!r}")
        raise BadInput(f"{request.rel_path}: at 'mode': {needs}{policy}")
    return Decision(fallback.mode, fallback=fallback.unplaced_reason if unplaced else fallback.reason)


def _unplaced(ctx: Context, request: Request, placed: placement.Placement) -> str | None:
    """None when this host takes the run; why no host can, when none can; NotPlacedHere when it
    is another host's (until quick.host_wait_s has passed) or this one's after a rewarm."""
    if placed.where == placement.HERE:
        return None
    if placed.where == placement.WAIT:
        raise NotPlacedHere(placed.why, waits_here=True)
    wait_s = ctx.settings.quick.host_wait_s
    if placed.where == placement.ELSEWHERE:
        if not placement.waited_out(request.run_id, utcnow(), wait_s):
            raise NotPlacedHere(placed.why, waits_here=False)
        return f"{placed.why}, and none claimed it within quick.host_wait_s ({wait_s:g} s)"
    return placed.why


def authority_refusal(settings: Settings, key: str, request: Request) -> str | None:
    """None when `requested_by` may ask for this run; else the sentence that rejects it.

    Whoever can push to the registry can write any `requested_by`, so a name or '*' in
    authority.<key> admits any request that names it. A forge rule (org:, team:, collaborator)
    is different: only the forge can answer it, so it admits only a request the forge intake
    filed — which records the rule it checked at comment time in `forge.allowed_by` — and only
    while a forge is configured and authority.<key> still holds that rule."""
    user = request.requested_by
    if settings.authority.allows(key, user):
        return None
    where = request.rel_path
    forge_rules = [rule for rule in settings.authority.rules(key) if is_forge_rule(rule)]
    allowed_by = request.forge.allowed_by if request.forge else None
    if allowed_by:
        if not settings.forge.enabled:
            return (f"{where}: at 'forge.allowed_by': {user!r} was admitted on a forge by {allowed_by!r}, "
                    "but ccci.yaml configures no forge (forge.url), so forge rules admit nobody")
        if is_forge_rule(allowed_by) and allowed_by in forge_rules:
            return None
        return (f"{where}: at 'forge.allowed_by': {user!r} was admitted on the forge by {allowed_by!r}, "
                f"which authority.{key} in ccci.yaml does not hold")
    if not forge_rules:
        return f"{where}: at 'requested_by': {user!r} is not allowed by authority.{key} in ccci.yaml"
    field = "forge.allowed_by" if settings.forge.enabled else "requested_by"
    return (f"{where}: at '{field}': {user!r} is not named in authority.{key} in ccci.yaml, and its "
            f"forge rules ({', '.join(forge_rules)}) apply only to requests the forge intake filed, "
            "which carry the rule that admitted the commenter as forge.allowed_by"
            + ("" if settings.forge.enabled else " (and ccci.yaml configures no forge)"))


def admit(ctx: Context, file_name: str) -> tuple[Request, Decision]:
    """Read and decide one pending request; Rejected (after committing the rejection) when it
    must not run."""
    request: Request | None = None
    try:
        request = ctx.registry.read_request(file_name)
        return request, decide(ctx, request)
    except BadInput as exc:
        raise Rejected(exc, committed=reject(ctx, file_name, exc, request)) from exc


def what_was_asked(request: Request) -> dict[str, Any]:
    """What a result keeps of its request beyond recipe, ref, mode, requested_by and pr."""
    return {"trigger": request.trigger, "forge": request.forge.to_document() if request.forge else None}


def new_result(ctx: Context, request: Request, decision: Decision) -> RunResult:
    started = now_iso()
    return RunResult(
        run=request.run_id,
        recipe=request.recipe,
        ref=request.ref,
        mode=decision.mode,
        requested_mode=request.mode,
        fallback=decision.fallback,
        gating=modes.mode(decision.mode).gates,
        outcome="running",
        started_at=started,
        requested_by=request.requested_by,
        pr=request.pr,
        controller=ctx.controller_id,
        **what_was_asked(request),
        host=ctx.host,
        deadline=placement.deadline(ctx.settings, request.recipe, started, decision.mode),
        follow_up_of=request.follow_up_of,
    )



def claim(ctx: Context, request: Request, decision: Decision) -> Run | None:
    """Mark the run in flight, then commit its `running` result and push; None when another
    controller claimed it first. A claim nobody else can see does not count."""
    result = new_result(ctx, request, decision)
    try:
        marker = inflight.begin(ctx.state, request.run_id, mode=decision.mode, recipe=request.recipe,
                                registry=str(ctx.registry.root))
    except inflight.HeldElsewhere:
        return None  # a controller sharing this state dir is claiming or running it
    rel = names.result_rel(result.run)

    def write(root: Path) -> list[str] | None:
        ctx.registry.drop_uncommitted(rel)
        if (root / rel).exists():
            return None
        _write_result(root, rel, result)
        return [rel]

    try:
        won = ctx.registry.transact(write, _message(result), must_publish=True) is not None
    except BaseException:
        marker.end()
        raise
    if not won:
        marker.end()
        return None
    marker.update(claimed=True)
    run = Run(request, result, marker)
    log.info("claimed %s (%s)", request.run_id, decision.mode)
    for sink in _sinks(ctx):
        _tell(sink, "claimed", functools.partial(sink.claimed, ctx, run))
    return run


def execute(ctx: Context, run: Run) -> RunResult:
    """Run a claimed run through its mode's runner to a verdict; never raises for a run's
    own failure (the verdict says it). The housekeeping the runner registered is left for
    `finish`, after the verdict is committed — unless the run is interrupted (SIGTERM): then
    it is done here, and the run keeps its marker, for start-up recovery to abort."""
    result = run.result
    entry = modes.MODES.get(result.mode or "")
    with run_context(result.run):
        try:
            if entry is None or entry.runner is None:
                raise CcciError(f"mode {result.mode!r} has no runner in this controller", cause="infra")
            entry.runner(ctx, run)
        except BadInput as exc:
            result.outcome = "rejected"
            result.cause = exc.cause  # policy, when the host policy refused the stack
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
        except BaseException:
            housekeep(ctx, run)
            raise
        if result.outcome == "running":
            result.outcome = "error"
            result.cause = "infra"
            result.error = "the run ended without a verdict"
        result.verdict_at = now_iso()
    return result


def housekeep(ctx: Context, run: Run) -> None:
    """Do what the run registered for after its verdict, and say how it went in
    `result.housekeeping`; a failure raises an alert for the app and never touches the verdict."""
    if not run.housekeeping.pending:
        return
    result = run.result
    key = f"housekeeping-{result.app or result.run}"
    try:
        run.housekeeping.run()
    except Exception as exc:  # whatever it was, the verdict stands and the next run must know
        message = exc.message if isinstance(exc, CcciError) else f"{type(exc).__name__}: {exc}"
        result.housekeeping = {"status": "failed", "error": message}
        raise_alert(ctx.state, key, f"after the {result.outcome} verdict of run {result.run}, "
                    f"housekeeping failed: {message}", run=result.run, app=result.app)
        return
    result.housekeeping = {"status": "done"}
    clear_alert(ctx.state, key)


def finish(ctx: Context, run: Run) -> Publication:
    """Commit and report the verdict; then do the housekeeping and commit `finished_at` (a
    second commit, the verdict as it was); then let go of the in-flight marker. A run without
    housekeeping is one commit. A verdict or finish the registry never got keeps the marker:
    the next start-up aborts the run, or finishes it."""
    result = run.result
    result.verdict_at = result.verdict_at or now_iso()
    pending = run.housekeeping.pending
    if not pending:
        result.finished_at = result.verdict_at
    committed = False
    try:
        try:
            publication = publish(ctx, result, run.request, index=run.index)
        finally:  # the teardown does not wait for a registry that failed us
            housekeep(ctx, run)
        if pending:
            result.finished_at = now_iso()
            record_finished(ctx, result)
        committed = True
    finally:
        if run.marker is not None:
            run.marker.end(keep=not committed)
    return publication


def record_finished(ctx: Context, result: RunResult) -> str | None:
    """The second commit of a run: the result with `finished_at` and its housekeeping, the
    verdict unchanged. No sink hears of it: they had the verdict."""
    rel = names.result_rel(result.run)
    status = (result.housekeeping or {}).get("status", "done")

    def write(root: Path) -> list[str] | None:
        _write_result(root, rel, result)
        return [rel]

    return ctx.registry.transact(write, _message(result, f"housekeeping {status}"))


def run_claimed(ctx: Context, run: Run) -> Publication:
    """Execute and finish: what `serve` and `ccci run` do with every claimed run."""
    execute(ctx, run)
    with run_context(run.result.run):
        publication = finish(ctx, run)
        log.info("finished %s: %s", run.result.run, run.result.outcome)
    return publication



def publish(ctx: Context, result: RunResult, request: Request | None, *,
            index: SnapshotIndex | None = None, only_if_unanswered: bool = False,
            request_file: str | None = None, only_if_running: bool = False,
            also: Callable[[Path], list[str]] | None = None) -> Publication:
    """Commit `result` — with the canonical it advances and the snapshot index it replaces, in
    the same commit, so a crash never leaves one without the other — then tell every sink.
    The verdict consumes the request: its file leaves `requests/` in the same commit (the result
    keeps what it asked, git keeps the file), so `requests/` holds only what waits or runs and
    no commit rewrites a folder the size of the history.
    `only_if_running`: only over a result that still says running (another host's run);
    `also` writes more files into the same commit (a re-filed request)."""
    rel = names.result_rel(result.run)
    consumed = f"{names.REQUESTS_DIR}/{request_file or result.run + '.yaml'}"
    run = Run(request, result) if request is not None else None
    advanced = False
    follow_up = followup.follow_up_request(ctx.settings, result, request)
    result.follow_up = follow_up.run_id if follow_up else None

    def write(root: Path) -> list[str] | None:
        nonlocal advanced
        if only_if_unanswered and (root / rel).exists():
            return None
        if only_if_running and _outcome_at(root, rel) != "running":
            return None
        touched = [rel]
        if run is not None:
            moved = canonical.advance_canonical(ctx, root, run)
            if moved:
                touched.append(moved)
        advanced = bool(result.canonical.get("advanced"))
        if follow_up is not None:  # in the verdict's commit: a crash never loses it
            target = root / follow_up.rel_path
            target.parent.mkdir(parents=True, exist_ok=True)
            write_whole(target, dump_document(follow_up.to_document()))
            touched.append(follow_up.rel_path)
        if index is not None:
            index_rel = names.snapshot_index_rel(ctx.host, index.app)
            target = root / index_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            write_whole(target, updated_text(root, index_rel, snapshot_index_document(index)))
            touched.append(index_rel)
        _write_result(root, rel, result)
        answered = root / consumed
        if answered.is_symlink() or answered.is_file():
            answered.unlink()
            touched.append(consumed)
        if also is not None:
            touched += also(root)
        return touched

    def message() -> str:
        extra = "canonical advanced" if advanced else ("snapshot replaced" if index is not None else "")
        if follow_up is not None:
            extra = f"follow-up cold {follow_up.run_id} filed"
        return _message(result, extra)

    commit = ctx.registry.transact(write, message)
    publication = Publication(commit, advanced)
    if commit is None:
        return publication
    if advanced:
        log.info("canonical of %s advanced to %s", result.recipe, (result.ref or "?")[:12])
    for sink in _sinks(ctx):
        _tell(sink, "published", functools.partial(sink.published, ctx, result, request, publication))
    return publication


def consume_answered(ctx: Context, index: ResultsIndex) -> bool:
    """Requests a registry of older ccci kept after their verdict leave `requests/`, in one
    commit (their results keep what they asked; git keeps the files). A request whose result
    still says `running` stays: its run is in flight, or recovery will answer it."""
    waiting = set(index.pending)
    running = set(index.running)

    def write(root: Path) -> list[str] | None:
        touched = []
        for entry in sorted((root / names.REQUESTS_DIR).glob("*.yaml")):
            run_id = names.result_id_for(entry.name)
            if (entry.name in waiting or run_id in running or not (entry.is_file() or entry.is_symlink())
                    or not (root / names.result_rel(run_id)).is_file()):
                continue
            rel = names.result_rel(run_id)
            if brief_of((root / rel).read_text(errors="replace"), rel).get("outcome") in (None, "running"):
                continue  # the index is a cache: the result itself decides
            entry.unlink()
            touched.append(f"{names.REQUESTS_DIR}/{entry.name}")
        return touched or None

    message = "ccci: answered requests leave requests/ (their results keep what they asked)"
    return ctx.registry.transact(write, message) is not None


def reject(ctx: Context, file_name: str, error: CcciError, request: Request | None = None,
           *, outcome: str = "rejected") -> bool:
    """Answer a request that never runs, unless someone else already did; True when we did."""
    result = rejection(ctx, file_name, error, request, outcome)
    with run_context(result.run):
        log.info("rejected %s: %s", file_name, error.message)
        return publish(ctx, result, request, only_if_unanswered=True, request_file=file_name).commit is not None


def rejection(ctx: Context, file_name: str, error: CcciError, request: Request | None,
              outcome: str = "rejected") -> RunResult:
    """The result for a request that never runs."""
    now = now_iso()
    asked = modes.MODES.get(request.mode) if request else None
    return RunResult(
        run=names.result_id_for(file_name),
        recipe=request.recipe if request else None,
        ref=request.ref if request else None,
        mode=None,
        requested_mode=request.mode if request else None,
        outcome=outcome,
        cause=None if outcome == "rejected" else "infra",
        gating=bool(asked and asked.gates),
        started_at=now,
        verdict_at=now,
        finished_at=now,
        error=error.message,
        requested_by=request.requested_by if request else None,
        pr=request.pr if request else None,
        controller=ctx.controller_id,
        **(what_was_asked(request) if request else {}),
        host=ctx.host,
    )


def abort(ctx: Context, run_id: str, existing: dict[str, Any], *, why: str | None = None,
          only_if_running: bool = False, also: Callable[[Path], list[str]] | None = None) -> Publication:
    """Publish the `aborted` verdict of a run the controller lost (it died mid-way); another
    host's run only while its result still says running (`only_if_running`)."""
    result = aborted_result(ctx, run_id, existing, why)
    request = None
    with contextlib.suppress(CcciError):  # the verdict goes out anyway; sinks needing it skip it
        request = ctx.registry.read_request(f"{run_id}.yaml")
    return publish(ctx, result, request, only_if_running=only_if_running, also=also)


def finish_after_crash(ctx: Context, run_id: str, existing: dict[str, Any],
                       housekeeping: dict[str, Any]) -> str | None:
    """The second commit of a run whose controller died after committing its verdict: start-up
    recovery did the housekeeping, this records it. The verdict stays exactly as committed."""
    rel = names.result_rel(run_id)
    doc = {**existing, "finished_at": now_iso(), "housekeeping": housekeeping}

    def write(root: Path) -> list[str] | None:
        write_whole(root / rel, dump_document(doc))
        return [rel]

    def text(key: str) -> str | None:
        value = existing.get(key)
        return str(value) if value is not None else None

    outcome = str(existing.get("outcome"))
    subject = RunResult(run=run_id, recipe=text("recipe"), ref=text("ref"), mode=text("mode"),
                        requested_mode=text("requested_mode"), outcome=outcome,
                        started_at=text("started_at") or "", error=text("error"))
    return ctx.registry.transact(write, _message(subject, "housekeeping finished by recovery"))


def aborted_result(ctx: Context, run_id: str, existing: dict[str, Any], why: str | None = None) -> RunResult:
    """The final result of a run the controller lost: outcome aborted, says why (by default: its
    own controller found it at start-up)."""
    def text(key: str) -> str | None:
        value = existing.get(key)
        return str(value) if value is not None else None

    mode = text("mode")
    pr = existing.get("pr")
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
        verdict_at=now_iso(),
        finished_at=now_iso(),
        error=why or (
            "the controller stopped while this run was in flight; its objects were torn down "
            f"at the next start-up ({ctx.controller_id}); request it again to re-run"
        ),
        requested_by=text("requested_by"),
        pr=pr if isinstance(pr, int) else None,
        app=text("app"),
        controller=ctx.controller_id,
        trigger=text("trigger"),
        forge=dict(existing["forge"]) if isinstance(existing.get("forge"), dict) else None,
        host=placement.host_of_result(existing) or ctx.host,
        deadline=text("deadline"),
    )



def rewarm(ctx: Context, recipe: str) -> RunResult:
    """Rewarm `warm-<recipe>` at its known-good: one run, under the app's lock from the first
    deploy until its verdict and snapshot index are committed."""
    ctx.settings.recipe(recipe)  # BadInput for a recipe ccci.yaml does not know
    current = ctx.registry.canonical(recipe)
    if current is None:
        raise CheckFailed(f"{recipe} has no canonical yet: a green cold run of its tracked line seeds it")
    request = Request(run_id=new_run_id(recipe), recipe=recipe, ref=current.known_good, mode="rewarm",
                      requested_by=CONTROLLER_USER)
    result = new_result(ctx, request, Decision("rewarm"))
    app = names.warm_app(recipe)
    with run_context(request.run_id), app_lock(ctx, app):
        # The fleet's keepers queue a rewarm for a known-good once (fleet/keepers.py), not again
        # after it failed.
        write_warm_state(ctx.state, app, rewarm_of=current.known_good)
        marker = inflight.begin(ctx.state, request.run_id, mode="rewarm", recipe=recipe, app=app,
                                registry=str(ctx.registry.root))
        run = Run(request, result, marker)
        execute(ctx, run)
        finish(ctx, run)
    log.info("rewarm of %s: %s", recipe, result.outcome)
    return result


def perform_queued_rewarm(ctx: Context, recipe: str) -> RunResult | None:
    """Run a queued rewarm and take it off the queue (a crash before this leaves it queued)."""
    try:
        return rewarm(ctx, recipe)
    except CcciError as exc:
        log.error("rewarm of %s could not run: %s", recipe, exc.message)
        return None
    finally:
        dequeue_rewarm(ctx, recipe)



def _outcome_at(root: Path, rel: str) -> str | None:
    path = root / rel
    if not path.is_file():
        return None
    try:
        return str(documents.read_result(path, rel).get("outcome"))
    except CcciError:
        return None


def _write_result(root: Path, rel: str, result: RunResult) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, dump_document(result.to_document()))


def _message(result: RunResult, extra: str = "") -> str:
    return commit_message(result, label=modes.label_of(result.mode or result.requested_mode, result.outcome),
                          extra=extra)


def _sinks(ctx: Context) -> Iterable[Sink]:
    return (*BUILTIN_SINKS, *ctx.sinks)


def _tell(sink: Sink, event: str, call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:  # a sink must never cost a verdict or the daemon
        log.exception("sink %s failed on %s", sink.name, event)
