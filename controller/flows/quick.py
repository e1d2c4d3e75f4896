"""The quick flow: upgrade the data-warm canonical app to the PR head; on failure
restore the last-known-good bytes. Never promotes, never gates."""

from __future__ import annotations

import dataclasses
import logging

from controller import snapshots
from controller.flows import deployment, hot, keycloak, policy
from controller.flows.context import Context, Run, phase
from controller.flows.deployment import Deployment
from controller.flows.fleet.placement import own_index
from controller.flows.warm_apps import app_lock, restore_app, restore_summary, write_warm_state
from controller.registry.results import RunResult
from controller.registry.settings import RecipeSettings
from controller.runtime import probe, stack
from controller.util import names
from controller.util.errors import CcciError
from controller.util.timeutil import Deadline, now_iso_ms

log = logging.getLogger(__name__)


def missing_for_quick(ctx: Context, recipe: str) -> str | None:
    """The mode's precondition: what a quick run of `recipe` lacks in the registry, if anything
    (which host holds its snapshot is placement's question: fleet/placement.py)."""
    if ctx.registry.canonical(recipe) is None:
        return "canonical"
    return None


def run_quick(ctx: Context, run: Run) -> None:
    """To the verdict; putting the app back (undeploy, and restore after a failure) is
    housekeeping, done under the app's lock before the next run of the app gets it."""
    request, result = run.request, run.result
    recipe = ctx.settings.recipe(request.recipe)
    app = names.warm_app(request.recipe)
    result.app = app
    result.gating = False
    with phase(ctx, result, "lock"):  # waits while another warm run has the app
        run.housekeeping.hold(app_lock(ctx, app))
    result.lock = {"app": app, "acquired_at": now_iso_ms()}
    run.housekeeping.then(_lock_released, result)
    _quick_locked(ctx, run, recipe.timeout_s)


def _lock_released(result: RunResult) -> None:
    if result.lock is not None:
        result.lock["released_at"] = now_iso_ms()


def _quick_locked(ctx: Context, run: Run, timeout_s: int) -> None:
    request, result = run.request, run.result
    recipe = ctx.settings.recipe(request.recipe)
    app = names.warm_app(request.recipe)
    index = own_index(ctx, app)
    info = snapshots.current_snapshot(ctx.state.snapshots, app)
    if index is None or info is None or info.manifest_sha256 != index.manifest_sha256:
        raise CcciError(f"{app}: this host's snapshot in snapshots-index/ is not on its disk; run "
                        f"`ccci canonical rewarm {request.recipe}`", cause="infra")
    deadline = Deadline(timeout_s)
    work = deployment.workdir(ctx, request.run_id)
    run.housekeeping.then(deployment.remove_workdir, work)
    running = hot.running_hot(ctx.state, app, index.commit, info.manifest_sha256) if recipe.keeps_hot else None
    port = running.host_port if running is not None else probe.free_port()
    with phase(ctx, result, "fetch"):
        base_commit = deployment.checkout_commit(ctx, recipe, index.commit, work / "base")
        commit = deployment.checkout_commit(ctx, recipe, request.ref, work / "head")
    base = Deployment(recipe=recipe, app=app, mode="warm", run=None, serves_run=request.run_id,
                      commit=base_commit, domain=ctx.settings.domain(app), host_port=port,
                      checkout=work / "base", owner=ctx.state.owner_id)
    head = dataclasses.replace(base, commit=commit, checkout=work / "head")
    # Before the warm app is touched: a stack the policy refuses never reaches its data.
    policy.judge(ctx, result, base)
    policy.judge(ctx, result, head, known_good=lambda: base)
    hot.forget_hot(ctx.state, app)  # from here on the app is this run's upgrade, not the known-good
    if running is None:
        stack.undeploy(app, remove_volumes=False)  # a crashed run's deploy must not hold the volumes
        # Hermetic: every quick run starts from the last-known-good bytes (a hot app: from the
        # known-good running on them since its restore).
        with phase(ctx, result, "restore"):
            if not snapshots.volumes_clean(ctx.state.snapshots, app):
                report = restore_app(ctx.state, app)
                result.snapshot = restore_summary(report)
    snapshots.mark_volumes_dirty(ctx.state.snapshots, app)
    realms: list[keycloak.RealmGrant] = []
    run.housekeeping.then(_put_back, ctx, result, recipe, app, realms, (index.commit, info.manifest_sha256))
    try:
        result.upgrade = {"from": base_commit, "to": commit}
        if running is not None:
            result.upgrade["hot"] = True  # it started with the upgrade: no restore, no reattach
        if base_commit == commit:
            # An upgrade test needs a real "from" version; say so, do not hide it.
            note = "the PR head is the snapshot's commit: no upgrade path was tested"
            result.upgrade["note"] = note
            log.warning("quick run of %s: %s", request.recipe, note)
        if recipe.sso:
            with phase(ctx, result, "sso"):
                realms.append(keycloak.prepare_realm(ctx, result, request.recipe, request.run_id, app))
                base.extra_env.update(realms[0].env())
                head.extra_env.update(realms[0].env())
        if running is not None:
            before = running.state
        else:
            deployment.deploy_app(ctx, result, base, name="reattach")
            with phase(ctx, result, "converge (reattach)"):
                # No stability window: the known-good already stayed up through one on these very
                # bytes before its snapshot was taken, and this is where the upgrade starts from,
                # not what is judged: the upgrade starts once every replica runs healthy.
                before = stack.wait_converged(app, deadline, stability_s=0, expected_commit=base_commit)
        deployment.upgrade_and_judge(ctx, result, head, deadline, before=before)
    except CcciError as exc:
        result.outcome = "fail" if exc.cause in ("recipe", "timeout", "limit") else "error"
        result.cause = exc.cause or "infra"
        result.error = exc.message


def _put_back(ctx: Context, result: RunResult, recipe: RecipeSettings, app: str,
              realms: list[keycloak.RealmGrant], known_good: tuple[str, str]) -> None:
    """After the verdict. PASS: undeploy, keep the (dirty) volume. Anything else: undeploy,
    restore, verify, mark clean. A hot app is restored either way and deployed again at the
    known-good (`known_good`: its commit and snapshot). A failure here never changes the
    verdict: the volumes stay marked dirty, so the next warm run of the app restores them first."""
    try:
        deployment.undeploy_app(ctx, result, app, remove_volumes=False)
        if result.outcome == "pass" and not recipe.keeps_hot:
            write_warm_state(ctx.state, app, data_commit=result.ref)
        else:
            with phase(ctx, result, "rollback" if result.outcome != "pass" else "restore (hot)"):
                report = restore_app(ctx.state, app)
            result.snapshot = restore_summary(report)
            if recipe.keeps_hot:
                result.snapshot["hot"] = hot.deploy_hot(ctx, result, recipe, app, *known_good)
    except CcciError as exc:
        result.snapshot = {**result.snapshot, "verified": False}
        raise CcciError(f"putting {app} back failed: {exc.message}", cause="infra") from exc
    finally:
        for realm in realms:
            try:
                keycloak.release_realm(ctx, result, realm)
            except CcciError as exc:
                log.error("realm cleanup failed: %s", exc.message)
