"""Rewarm: bring `warm-<recipe>` to the known-good commit and snapshot it; and the
queue of rewarms a promotion asks for."""

from __future__ import annotations

import logging

from controller import snapshots
from controller.flows import deployment, hot, keycloak, policy
from controller.flows.context import Context, Publication, Run, phase
from controller.flows.deployment import Deployment
from controller.flows.fleet.placement import keeps_warm
from controller.flows.warm_apps import (
    index_from_info,
    restore_app,
    restore_summary,
    take_app_snapshot,
    write_warm_state,
)
from controller.registry.documents import Request
from controller.registry.results import RunResult
from controller.runtime import images, probe, stack
from controller.util import names
from controller.util.errors import BadInput, CcciError
from controller.util.files import write_durably
from controller.util.timeutil import Deadline, now_iso

log = logging.getLogger(__name__)


def run_rewarm(ctx: Context, run: Run) -> None:
    """The runner: deploy the known-good on the warm app's data, assert, undeploy, snapshot.
    The caller holds the app's lock. On failure the old snapshot stays; the result says why."""
    result = run.result
    recipe_name = run.request.recipe
    app = names.warm_app(recipe_name)
    result.app = app
    result.gating = False
    result.canonical = {"before": run.request.ref, "after": run.request.ref, "advanced": False}
    try:
        info = _rewarm_locked(ctx, run, recipe_name, app)
    except BadInput:
        raise  # refused (the host policy): rejected, nothing was deployed
    except CcciError as exc:
        result.outcome = "fail" if exc.cause in ("recipe", "timeout", "limit") else "error"
        result.cause = result.cause or exc.cause or "infra"
        result.error = result.error or exc.message
        return
    if info is not None:
        run.index = index_from_info(info)


def _rewarm_locked(ctx: Context, run: Run, recipe_name: str, app: str) -> snapshots.SnapshotInfo | None:
    result = run.result
    recipe = ctx.settings.recipe(recipe_name)
    deadline = Deadline(recipe.timeout_s)
    hot.forget_hot(ctx.state, app)
    stack.undeploy(app, remove_volumes=False)  # a leftover (or hot) deploy must not hold the volumes
    current = snapshots.current_snapshot(ctx.state.snapshots, app)
    with phase(ctx, result, "restore"):
        if current is None:
            # No last-known-good: seed from empty, as a cold run would.
            stack.undeploy(app, remove_volumes=True)
        elif not snapshots.volumes_clean(ctx.state.snapshots, app):
            report = restore_app(ctx.state, app)
            result.snapshot = restore_summary(report)
    if current is not None:
        snapshots.mark_volumes_dirty(ctx.state.snapshots, app)
    work = deployment.workdir(ctx, result.run)
    realm = None
    passed = False
    try:
        with phase(ctx, result, "fetch"):
            commit = deployment.checkout_commit(ctx, recipe, run.request.ref, work / "recipe")
        dep = Deployment(recipe=recipe, app=app, mode="warm", run=None, serves_run=result.run, commit=commit,
                         domain=ctx.settings.domain(app), host_port=probe.free_port(),
                         checkout=work / "recipe", owner=ctx.state.owner_id)
        policy.judge(ctx, result, dep)
        if recipe.sso:
            with phase(ctx, result, "sso"):
                realm = keycloak.prepare_realm(ctx, result, recipe_name, result.run, app)
                dep.extra_env.update(realm.env())
        deployment.deploy_app(ctx, result, dep)
        passed = deployment.converge_and_assert(ctx, result, dep, deadline)
        if passed:  # prune keeps what the snapshot's commit needs to reattach
            write_warm_state(ctx.state, app, images=sorted(images.service_image_refs(app)))
    finally:
        try:
            deployment.undeploy_app(ctx, result, app, remove_volumes=False)
        finally:
            if realm is not None:
                keycloak.release_realm(ctx, result, realm)
            deployment.remove_workdir(work)
    if not passed:
        failed = [a.name for a in result.asserts if not a.ok]
        result.outcome, result.cause = "fail", "recipe"
        result.error = f"asserts failed on the known-good: {', '.join(failed)}; the old snapshot stays"
        return None
    with phase(ctx, result, "snapshot"):
        info = take_app_snapshot(ctx.state, app, commit, result.run,
                                 min_free_gb=ctx.settings.limits.disk_min_free_gb)
    result.snapshot = {"restored": bool(result.snapshot.get("restored")), "verified": True,
                       "taken": info.manifest_sha256}
    if recipe.keeps_hot:
        result.snapshot["hot"] = hot.deploy_hot(ctx, result, recipe, app, commit, info.manifest_sha256)
    result.outcome = "pass"
    return info


def queue_rewarm(ctx: Context, recipe: str) -> None:
    """Ask for a rewarm of `warm-<recipe>`; a file, so a crash before it ran does not lose it."""
    write_durably(ctx.state.rewarm_request(recipe), now_iso().encode())


def queued_rewarms(ctx: Context) -> list[str]:
    queue = ctx.state.queue
    if not queue.is_dir():
        return []
    return sorted(p.name.removeprefix("rewarm-") for p in queue.glob("rewarm-*")
                  if p.name.removeprefix("rewarm-") in ctx.settings.recipes)


def dequeue_rewarm(ctx: Context, recipe: str) -> None:
    ctx.state.rewarm_request(recipe).unlink(missing_ok=True)


class RewarmQueue:
    """The sink that asks for a rewarm when a verdict moved a canonical — on this host, when it
    keeps the recipe warm (it ran the promoting cold; or `warm_hosts` names it). The other
    keepers of the fleet queue theirs when they see the new known-good (fleet/keepers.py)."""

    name = "rewarm-queue"

    def claimed(self, ctx: Context, run: Run) -> None:
        return None

    def published(self, ctx: Context, result: RunResult, request: Request | None,
                  publication: Publication) -> None:
        if publication.advanced and result.recipe and keeps_warm(ctx.settings, result.recipe, ctx.host,
                                                                  promoted_on=ctx.host):
            queue_rewarm(ctx, result.recipe)
