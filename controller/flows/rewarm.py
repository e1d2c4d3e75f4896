"""Rewarm (DESIGN §4): bring `warm-<recipe>` to the known-good commit and snapshot it."""

from __future__ import annotations

import logging
from pathlib import Path

from controller import snapshots
from controller.flows import deployment, sso_setup
from controller.flows.context import Context, phase
from controller.flows.deployment import Deployment
from controller.flows.warm import (
    app_lock,
    index_rel,
    index_text,
    restore_app,
    restore_summary,
    take_app_snapshot,
    warm_app_name,
    write_warm_state,
)
from controller.registry import documents
from controller.registry.results import RunResult, commit_message
from controller.registry.yamlio import dump_document
from controller.runtime import images, probe, stack
from controller.util import inflight
from controller.util.errors import CcciError, CheckFailed
from controller.util.log import run_context
from controller.util.timeutil import Deadline, new_run_id, now_iso

log = logging.getLogger(__name__)


def rewarm(ctx: Context, recipe_name: str) -> RunResult:
    """Deploy the known-good on the warm app's data, assert, undeploy, snapshot, commit.
    On failure the old snapshot and its index stay; the result says why."""
    ctx.settings.recipe(recipe_name)  # BadInput for a recipe ccci.yaml does not know
    app = warm_app_name(recipe_name)
    run_id = new_run_id(recipe_name)
    canonical = ctx.registry.canonical(recipe_name)
    if canonical is None:
        raise CheckFailed(f"{recipe_name} has no canonical yet: a green cold run of its tracked line seeds it")
    result = RunResult(run=run_id, recipe=recipe_name, ref=canonical.known_good, mode="rewarm",
                       requested_mode="rewarm", outcome="running", gating=False, started_at=now_iso(),
                       requested_by="ccci", app=app, controller=ctx.controller_id)
    result.canonical = {"before": canonical.known_good, "after": canonical.known_good, "advanced": False}
    info: snapshots.SnapshotInfo | None = None
    with run_context(run_id), app_lock(ctx, app):
        marker = inflight.begin(ctx.state, run_id, mode="rewarm", recipe=recipe_name, app=app,
                                registry=str(ctx.registry.root))
        try:
            info = _rewarm_locked(ctx, result, recipe_name, app)
        except CcciError as exc:
            result.outcome = "fail" if exc.cause in ("recipe", "timeout") else "error"
            result.cause = result.cause or exc.cause or "infra"
            result.error = result.error or exc.message
        result.finished_at = now_iso()
        _commit(ctx, result, info)
        marker.end()
    return result


def _rewarm_locked(ctx: Context, result: RunResult, recipe_name: str, app: str) -> snapshots.SnapshotInfo | None:
    recipe = ctx.settings.recipe(recipe_name)
    assert result.ref
    deadline = Deadline(recipe.timeout_s)
    stack.undeploy(app, remove_volumes=False)  # a leftover deploy must not hold the volumes
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
            commit = deployment.checkout_commit(ctx, recipe, result.ref, work / "recipe")
        dep = Deployment(recipe=recipe, app=app, mode="warm", run=None, commit=commit,
                         domain=ctx.settings.domain(app), host_port=probe.free_port(),
                         checkout=work / "recipe", owner=ctx.state.owner_id)
        if recipe.sso:
            with phase(ctx, result, "sso"):
                realm = sso_setup.prepare_realm(ctx, result, recipe_name, result.run, app)
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
                sso_setup.release_realm(ctx, result, realm)
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
    result.outcome = "pass"
    return info


def _commit(ctx: Context, result: RunResult, info: snapshots.SnapshotInfo | None) -> None:
    """The result and (when a new snapshot was taken) the index, in one `[rewarm]` commit."""
    rel = documents.result_rel_path(result.run)

    def write(root: Path) -> list[str] | None:
        touched = [rel]
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_document(result.to_document()))
        if info is not None:
            index_path = root / index_rel(info.app)
            index_path.parent.mkdir(parents=True, exist_ok=True)
            index_path.write_text(index_text(ctx, info))
            touched.append(index_rel(info.app))
        return touched

    ctx.registry.transact(write, commit_message(result, extra="snapshot replaced" if info else ""))
