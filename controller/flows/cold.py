"""The cold flow: deploy the PR head fresh, assert, tear everything down."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from controller.flows import deployment, keycloak, policy
from controller.flows.context import Context, Run, phase
from controller.flows.deployment import Deployment
from controller.registry import recipes
from controller.registry.results import RunResult
from controller.runtime import probe
from controller.util import names
from controller.util.errors import CcciError
from controller.util.timeutil import Deadline

log = logging.getLogger(__name__)


def _known_good(ctx: Context, dep: Deployment, dest: Path) -> Deployment | None:
    """The recipe's known-good, checked out beside the head, to compare what each asks of the host."""
    canonical = ctx.registry.canonical(dep.recipe.name)
    if canonical is None or canonical.known_good == dep.commit:
        return None
    commit = deployment.checkout_commit(ctx, dep.recipe, canonical.known_good, dest)
    return dataclasses.replace(dep, commit=commit, checkout=dest, layout=None)


def run_cold(ctx: Context, run: Run) -> None:
    """To the verdict; the teardown is housekeeping, registered before anything is deployed."""
    request, result = run.request, run.result
    recipe = ctx.settings.recipe(request.recipe)
    app = names.cold_app(request.recipe, request.run_id)
    result.app = app
    deadline = Deadline(recipe.timeout_s)
    work = deployment.workdir(ctx, request.run_id)
    realms: list[keycloak.RealmGrant] = []
    run.housekeeping.then(teardown, ctx, result, app, realms, work)
    with phase(ctx, result, "fetch"):
        commit = deployment.checkout_commit(ctx, recipe, request.ref, work / "recipe")
    dep = Deployment(recipe=recipe, app=app, mode="cold", run=request.run_id, commit=commit,
                     domain=ctx.settings.domain(app), host_port=probe.free_port(),
                     checkout=work / "recipe", owner=ctx.state.owner_id)
    policy.judge(ctx, result, dep, known_good=lambda: _known_good(ctx, dep, work / "known-good"))
    if recipe.sso:
        with phase(ctx, result, "sso"):
            realms.append(keycloak.prepare_realm(ctx, result, request.recipe, request.run_id, app))
            dep.extra_env.update(realms[0].env())
    deployment.deploy_app(ctx, result, dep)
    passed = deployment.converge_and_assert(ctx, result, dep, deadline)
    result.outcome = "pass" if passed else "fail"
    if not passed:
        result.cause = "recipe"
        failed = [a.name for a in result.asserts if not a.ok]
        result.error = f"asserts failed: {', '.join(failed)}"
    else:
        # Promotion is decided here and committed with the verdict: it rests on the asserts and
        # the tracked line alone; the teardown after it touches only this run's own objects.
        off_line = recipes.off_tracked_line(ctx.state, recipe, commit)
        result.promote = off_line is None
        if off_line:
            result.canonical["reason"] = f"not promoted: {off_line}"


def teardown(ctx: Context, result: RunResult, app: str, realms: list[keycloak.RealmGrant],
             work: Path) -> None:
    """Everything of a throw-away app goes (a cold run's, an upgrade run's), its realm and work
    dir too; the first failure is raised once every step was tried (start-up recovery removes
    what is left)."""
    failure: CcciError | None = None
    try:
        deployment.undeploy_app(ctx, result, app, remove_volumes=True)
    except CcciError as exc:
        failure = exc
    for realm in realms:
        try:
            keycloak.release_realm(ctx, result, realm)
        except CcciError as exc:
            failure = failure or exc
    deployment.remove_workdir(work)
    if failure is not None:
        raise CcciError(f"teardown of {app} failed: {failure.message}", cause="infra")
