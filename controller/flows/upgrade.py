"""The upgrade matrix: the PR head deployed as an upgrade from each of the recipe's latest
release tags, each on a throw-away app whose data that tag initialised. Never promotes, never
gates, never touches a warm app or a snapshot.

A row per tag, one after the other on one app name (the cold run's `<recipe>-<6 hex>`, with its
labels, so teardown, recovery, the leak check and prune treat it as the cold app it is): deploy
the tag fresh → converge and its own asserts → upgrade to the head → converge and the head's
asserts → teardown with the volumes. A tag that does not pass its own asserts says so
(`from-version-broken`): nothing was learnt about the head from it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from controller.flows import deployment, keycloak, policy
from controller.flows.cold import teardown
from controller.flows.context import Context, Run, phase
from controller.flows.deployment import Deployment
from controller.registry import recipes
from controller.registry.recipes import ReleaseTag
from controller.registry.results import AssertOutcome, Phase, RunResult
from controller.runtime import probe
from controller.util import names
from controller.util.errors import BadInput, CcciError
from controller.util.timeutil import Deadline, now_iso

log = logging.getLogger(__name__)

FROM_BROKEN = "from-version-broken"
# A row's verdict from the cause that ended it early: the head's fault, or no verdict on it.
HEAD_FAULTS = ("recipe", "timeout", "limit")


def run_upgrade(ctx: Context, run: Run) -> None:
    """To the verdict: every row, each torn down before the next starts (the host runs one of
    them at a time); the housekeeping tears down whatever a row left and releases the realm."""
    request, result = run.request, run.result
    recipe = ctx.settings.recipe(request.recipe)
    app = names.cold_app(request.recipe, request.run_id)
    result.app = app
    result.gating = False
    work = deployment.workdir(ctx, request.run_id)
    run.housekeeping.then(deployment.remove_workdir, work)
    count = ctx.settings.upgrade_from_tags(request.recipe)
    with phase(ctx, result, "fetch"):
        commit = deployment.checkout_commit(ctx, recipe, request.ref, work / "head")
        tags = recipes.releases_before(ctx.state, recipe, commit, count)
    if not tags:
        raise BadInput(f"recipe {request.recipe!r} has no release tag (X.Y.Z+<upstream>) in the history "
                       f"of {commit[:12]} other than the commit itself, so there is no version to "
                       "upgrade from")
    realms: list[keycloak.RealmGrant] = []
    run.housekeeping.then(teardown, ctx, result, app, realms, work)  # before anything is deployed
    head = Deployment(recipe=recipe, app=app, mode="cold", run=request.run_id, commit=commit,
                      domain=ctx.settings.domain(app), host_port=probe.free_port(),
                      checkout=work / "head", owner=ctx.state.owner_id)
    froms = []
    with phase(ctx, result, "fetch (tags)"):
        for index, tag in enumerate(tags, 1):
            dest = work / f"from-{index}"
            recipes.export_commit(ctx.state, recipe, tag.commit, dest)  # fetched with the head
            froms.append(dataclasses.replace(head, commit=tag.commit, checkout=dest))
    # Before anything is deployed, every stack the run deploys: each release, then the head
    # (last, so the result keeps its asks, and what it asks beyond the newest release). A
    # release the host refuses costs its own row; a refused head rejects the run.
    refused: dict[str, dict[str, Any]] = {}
    for tag, dep in zip(tags, froms, strict=True):
        try:
            policy.judge(ctx, result, dep)
        except policy.PolicyRefused as exc:
            refused[tag.name] = _refused_row(tag, exc)
    policy.judge(ctx, result, head, known_good=lambda: froms[0])
    if recipe.sso:
        with phase(ctx, result, "sso"):
            realms.append(keycloak.prepare_realm(ctx, result, request.recipe, request.run_id, app))
        for dep in (head, *froms):
            dep.extra_env.update(realms[0].env())
    result.matrix = []
    for tag, base in zip(tags, froms, strict=True):
        row = refused.get(tag.name) or _run_row(ctx, result, tag, base, head)
        result.matrix.append(row)
        if row.get("teardown") == "failed":
            break  # the next row would deploy onto what this one left
    _verdict(result, tags)


def _run_row(ctx: Context, result: RunResult, tag: ReleaseTag, base: Deployment,
             head: Deployment) -> dict[str, Any]:
    """One row: the tag fresh, then upgraded to the head, then gone. Its phases and asserts are
    its own (the run's carry one phase per row and the row's asserts, named by the tag)."""
    row = RunResult(run=result.run, recipe=result.recipe, ref=head.commit, mode="upgrade",
                    requested_mode=None, outcome="running", started_at=now_iso())
    label = f"from {tag.name}"
    ctx.progress(label, "start")
    deadline = Deadline(base.recipe.timeout_s)  # each row its own: the claim's deadline counts them
    stage = "from"
    try:
        deployment.deploy_app(ctx, row, base, name="deploy (from)")
        before = deployment.converge(ctx, row, base, deadline, suffix="from")
        if not deployment.assert_app(ctx, row, base, before, deadline, suffix="from"):
            raise CcciError("its own asserts failed: " + ", ".join(a.name for a in row.asserts if not a.ok),
                            cause="recipe")
        stage = "upgrade"
        deployment.upgrade_and_judge(ctx, row, head, deadline, before=before, name="deploy (upgrade)",
                                     suffix="upgrade")
    except CcciError as exc:
        if stage == "from" and exc.cause in (*HEAD_FAULTS, None):
            row.outcome, row.cause = "error", FROM_BROKEN
            row.error = f"{tag.name} itself did not deploy and pass: {exc.message}"
        else:
            row.outcome = "fail" if exc.cause in HEAD_FAULTS else "error"
            row.cause = exc.cause or "infra"
            row.error = exc.message
    teardown_status = "done"
    try:
        deployment.undeploy_app(ctx, row, base.app, remove_volumes=True)
    except CcciError as exc:
        teardown_status = "failed"
        log.error("teardown of %s after the row from %s failed: %s", base.app, tag.name, exc.message)
    seconds = sum(p.seconds for p in row.phases)
    result.phases.append(Phase(label, "ok" if row.outcome == "pass" else "failed", seconds))
    result.asserts.extend(AssertOutcome(f"{label}: {a.name}", a.ok, a.detail) for a in row.asserts)
    ctx.progress(label, "ok" if row.outcome == "pass" else "failed")
    return {
        "from": tag.name,
        "from_commit": tag.commit,
        "verdict": row.outcome,
        "cause": row.cause,
        "error": row.error,
        "seconds": round(seconds, 2),
        "phases": [{"name": p.name, "status": p.status, "seconds": round(p.seconds, 2)} for p in row.phases],
        "failed_asserts": [a.name for a in row.asserts if not a.ok],
        "teardown": teardown_status,
    }


def _refused_row(tag: ReleaseTag, exc: policy.PolicyRefused) -> dict[str, Any]:
    """The row of a release this host's policy does not let deploy: an error, nothing run."""
    log.warning("the upgrade from %s is not tested: %s", tag.name, exc.message)
    return {"from": tag.name, "from_commit": tag.commit, "verdict": "error", "cause": exc.cause,
            "error": f"{tag.name} is not deployed here: {exc.message}", "seconds": 0.0, "phases": [],
            "failed_asserts": [], "teardown": "done"}


def _verdict(result: RunResult, tags: list[ReleaseTag]) -> None:
    """Pass only if every row passed; a row the head failed makes it a fail, else an error (a
    broken release or the host: nothing wrong was found in the head, nothing proven either)."""
    rows = result.matrix or []
    failed = [r for r in rows if r["verdict"] == "fail"]
    other = [r for r in rows if r["verdict"] not in ("pass", "fail")]
    untested = len(tags) - len(rows)
    if not failed and not other and not untested:
        result.outcome = "pass"
        return
    result.outcome = "fail" if failed else "error"
    if not failed and not other:
        result.cause, result.error = "infra", f"{untested} of {len(tags)} rows did not run (a teardown failed)"
        return
    first = (failed or other)[0]
    result.cause = first["cause"]
    result.error = f"the upgrade from {first['from']}: {first['error']}"
    if untested:
        result.error += f"; {untested} later rows did not run (a teardown failed)"
