"""Hot canonical apps (`recipes.<r>.hot`): the warm app kept running at its known-good between
quick runs, so a quick run starts with the upgrade.

The warm state's `hot` field says which known-good commit and snapshot the running app was
deployed on, right after a restore. It is only a claim: a quick run uses the app only when the
engine shows it converged at that commit and the snapshot is still the last-known-good; anything
else (a crash, a reboot, a rewarm) falls back to the data-warm path, which undeploys and
restores. The field is cleared before anything else touches the app."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from controller.flows import deployment
from controller.flows.context import Context, phase
from controller.flows.deployment import Deployment
from controller.flows.warm_apps import read_warm_state, write_warm_state
from controller.registry.results import RunResult
from controller.registry.settings import RecipeSettings
from controller.runtime import probe, stack
from controller.snapshots import mark_volumes_dirty
from controller.util.errors import CcciError
from controller.util.paths import StateDir
from controller.util.timeutil import Deadline, now_iso

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HotApp:
    state: stack.AppState  # as the engine shows it now: the upgrade's baseline
    host_port: int | None


def running_hot(state: StateDir, app: str, commit: str, snapshot: str) -> HotApp | None:
    """The app, if it runs hot at `commit` on the data of `snapshot` and has converged."""
    hot = read_warm_state(state, app).get("hot")
    if not isinstance(hot, dict) or hot.get("commit") != commit or hot.get("snapshot") != snapshot:
        return None
    shown = stack.inspect_app(app)
    fatal, waiting = stack.convergence_problem(shown, expected_commit=commit, known_failures={})
    if not shown.services or fatal or waiting:
        log.info("%s is not running hot at %s (%s); it gets the data-warm path", app, commit[:12],
                 fatal or waiting or "no services")
        return None
    port = hot.get("port")
    return HotApp(shown, port if isinstance(port, int) else None)


def forget_hot(state: StateDir, app: str) -> None:
    """Before the app is upgraded, undeployed or restored: it no longer runs the known-good."""
    if read_warm_state(state, app).get("hot") is not None:
        write_warm_state(state, app, hot=None)


def deploy_hot(ctx: Context, result: RunResult, recipe: RecipeSettings, app: str, commit: str,
               snapshot: str) -> bool:
    """Deploy the known-good on the just restored (or snapshotted) volumes and wait for it, under
    the app's lock. A failure leaves the app undeployed and data-warm (the volumes stay marked
    dirty, so the next warm run restores first); it never changes a verdict."""
    work = deployment.workdir(ctx, f"hot-{result.run}")
    try:
        checkout = work / "recipe"
        deployment.checkout_commit(ctx, recipe, commit, checkout)
        dep = Deployment(recipe=recipe, app=app, mode="warm", run=None, serves_run=result.run, commit=commit,
                         domain=ctx.settings.domain(app), host_port=probe.free_port(), checkout=checkout,
                         owner=ctx.state.owner_id)
        mark_volumes_dirty(ctx.state.snapshots, app)  # the running app writes to them
        deployment.deploy_app(ctx, result, dep, name="deploy (hot)")
        with phase(ctx, result, "converge (hot)"):
            stack.wait_converged(app, Deadline(recipe.timeout_s), stability_s=recipe.stability_s,
                                 expected_commit=commit)
        write_warm_state(ctx.state, app, hot={"commit": commit, "snapshot": snapshot, "port": dep.host_port,
                                              "since": now_iso()})
        return True
    except CcciError as exc:
        log.warning("%s could not be kept hot at %s: %s; it stays data-warm", app, commit[:12], exc.message)
        try:
            stack.undeploy(app, remove_volumes=False)
        except CcciError as gone:
            log.error("could not undeploy %s after its hot deploy failed: %s", app, gone.message)
        return False
    finally:
        deployment.remove_workdir(work)
