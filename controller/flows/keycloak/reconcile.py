"""`ccci warm reconcile`: keep the warm Keycloak healthy and current, behind the safety and health gates."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from controller import snapshots
from controller.flows import deployment
from controller.flows.context import Context, phase
from controller.flows.deployment import Deployment
from controller.flows.keycloak.deploy import deploy_keycloak, wait_keycloak
from controller.flows.keycloak.endpoint import (
    WARM_DOWN_ALERT,
    KeycloakEndpoint,
    endpoint_problem,
    keycloak_recipe,
    warm_endpoint,
)
from controller.flows.keycloak.gates import (
    GateVerdict,
    Version,
    read_release_notes,
    release_version,
    safety_gate,
    show_version,
)
from controller.registry import recipes
from controller.registry.results import Phase, RunResult
from controller.registry.settings import RecipeSettings
from controller.runtime import engine, images, stack
from controller.sso.naming import in_use, is_ours
from controller.util import inflight
from controller.util.alerts import clear_alert, raise_alert
from controller.util.errors import BadInput, CcciError
from controller.util.files import atomic_write_json, read_json
from controller.util.locks import exclusive, shared
from controller.util.names import check_app_name
from controller.util.paths import StateDir
from controller.util.timeutil import Deadline, now_iso

log = logging.getLogger(__name__)

OK_OUTCOMES = ("off", "healthy", "deployed", "up-to-date", "upgraded", "deferred")


@dataclass
class ReconcileReport:
    outcome: str  # one of OK_OUTCOMES, or: unhealthy | held | rolled-back | failed
    message: str
    commit: str | None = None
    phases: list[Phase] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome in OK_OUTCOMES


def alert_key(app: str) -> str:
    return f"warm-infra-{app}"


def check_infra_app(app: str) -> str:
    check_app_name(app, "ccci.yaml: at 'warm.keycloak.app'")
    if app.startswith("warm-"):
        raise BadInput(f"ccci.yaml: at 'warm.keycloak.app': {app!r} is in the canonicals' name "
                       "space (warm-*); live-warm infra needs its own name, such as infra-keycloak")
    return app


def read_deployed(state: StateDir, app: str) -> dict[str, str] | None:
    """What the controller last deployed as `app` and saw healthy."""
    doc = read_json(state.infra_state(app))
    return doc if isinstance(doc, dict) and isinstance(doc.get("commit"), str) else None


def _write_deployed(state: StateDir, app: str, commit: str, version: Version | None) -> None:
    atomic_write_json(state.infra_state(app), {
        "app": app, "commit": commit, "version": show_version(version) if version else None,
        "images": sorted(images.service_image_refs(app)),  # kept by prune
        "deployed_at": now_iso()})


def running_commit(app: str) -> str | None:
    """The `ccci.commit` every service of `app` carries, when they agree."""
    commits = {s.commit for s in stack.inspect_app(app).services}
    return commits.pop() if len(commits) == 1 and None not in commits else None


class _Reconciler:
    """One `ccci warm reconcile` of a managed Keycloak."""

    def __init__(self, ctx: Context, endpoint: KeycloakEndpoint, recipe: RecipeSettings) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.recipe = recipe
        self.app = check_infra_app(ctx.settings.warm.keycloak.app)
        self.result = RunResult(run=f"reconcile-{self.app}", recipe=recipe.name, ref=None,
                                mode="reconcile", requested_mode=None, outcome="running",
                                started_at=now_iso())

    def version(self, commit: str) -> Version | None:
        return release_version(recipes.tags_at(self.ctx.state, self.recipe, commit))

    def label(self, commit: str) -> str:
        version = self.version(commit)
        return f"{show_version(version)} ({commit[:12]})" if version else commit[:12]

    def report(self, outcome: str, message: str, commit: str | None) -> ReconcileReport:
        if outcome in OK_OUTCOMES and outcome != "deferred":
            clear_alert(self.ctx.state, alert_key(self.app))
        elif outcome not in OK_OUTCOMES:
            raise_alert(self.ctx.state, alert_key(self.app), message, app=self.app, outcome=outcome)
        log.info("reconcile of %s: %s: %s", self.app, outcome, message)
        return ReconcileReport(outcome, message, commit, self.result.phases)

    def deploy_and_check(self, commit: str, step: str, *, baseline: stack.AppState | None = None) -> None:
        kc = self.ctx.settings.warm.keycloak
        work = deployment.workdir(self.ctx, f"infra-{self.app}-{commit[:12]}")
        try:
            recipes.export_commit(self.ctx.state, self.recipe, commit, work)
            dep = Deployment(recipe=self.recipe, app=self.app, mode="infra", run=None, commit=commit,
                             domain=self.ctx.settings.domain(self.app), host_port=kc.port, checkout=work,
                             owner=self.ctx.state.owner_id)
            deploy_keycloak(self.ctx, self.result, dep, self.endpoint.admin_password, name=f"deploy {step}")
            wait_keycloak(self.ctx, self.result, dep, self.endpoint, Deadline(self.recipe.timeout_s),
                          name=f"health {step}", baseline=baseline)
        finally:
            deployment.remove_workdir(work)
        _write_deployed(self.ctx.state, self.app, commit, self.version(commit))

    def realms_in_use(self) -> list[str]:
        live = inflight.in_flight_runs(self.ctx.state)
        owner = self.ctx.state.owner_id
        realms = self.endpoint.client().realms()
        return sorted(r.name for r in realms if is_ours(r, owner) and in_use(r, live))

    def run(self, approve: str | None) -> ReconcileReport:
        state = self.ctx.state
        recipes.fetch_recipe(state, self.recipe)
        head = recipes.head_of_line(state, self.recipe)
        if head is None:
            raise BadInput(f"recipe {self.recipe.name!r} has no tracked line {self.recipe.track!r} to deploy")
        deployed = read_deployed(state, self.app)
        current = running_commit(self.app) or (deployed["commit"] if deployed else None)
        if current is None:
            try:
                self.deploy_and_check(head, "first")
            except CcciError as exc:
                # No last good version to go back to: stop it crash-looping, keep its volume.
                with contextlib.suppress(CcciError):
                    stack.undeploy(self.app, remove_volumes=False)
                return self.report("failed", f"the first deploy of {self.app} at {self.label(head)} "
                                             f"is not healthy, so it was undeployed: {exc.message}", None)
            return self.report("deployed", f"{self.app} deployed at {self.label(head)} and healthy", head)
        problem = endpoint_problem(self.endpoint)
        if problem is not None:
            log.warning("%s is not healthy (%s); redeploying %s", self.app, problem, self.label(current))
            try:
                self.deploy_and_check(current, "recover", baseline=stack.inspect_app(self.app))
            except CcciError as exc:
                return self.report("unhealthy", f"{self.app} at {self.label(current)} is not healthy "
                                                f"and a redeploy did not help: {exc.message}", current)
        if head == current:
            return self.report("up-to-date", f"{self.app} runs {self.label(current)}, the head of "
                                             f"{self.recipe.track}, and is healthy", current)
        return self.upgrade(current, head, approve)

    def upgrade(self, current: str, head: str, approve: str | None) -> ReconcileReport:
        state = self.ctx.state
        step = f"{self.label(current)} → {self.label(head)}"
        work = deployment.workdir(self.ctx, f"infra-{self.app}-gate")
        try:
            recipes.export_commit(state, self.recipe, head, work)
            notes = read_release_notes(work, self.version(current), self.version(head))
        finally:
            deployment.remove_workdir(work)
        verdict = safety_gate(self.version(current), self.version(head), notes)
        if not recipes.is_ancestor(state, self.recipe, current, head):
            verdict = GateVerdict(True, f"{head[:12]} does not descend from the deployed {current[:12]}")
        approved = approve is not None and len(approve) >= 7 and head.startswith(approve.lower())
        if verdict.hold and not approved:
            return self.report("held", f"upgrade of {self.app} {step} held: {verdict.reason}; nothing "
                                       f"was deployed (after any manual steps, approve it with "
                                       f"`ccci warm reconcile --approve {head}`)", current)
        busy = self.realms_in_use()
        if busy:
            return self.report("deferred", f"upgrade of {self.app} {step} deferred: runs in flight use "
                                           f"realms {', '.join(busy)}", current)
        try:
            with phase(self.ctx, self.result, "snapshot"):
                stack.undeploy(self.app, remove_volumes=False)
                snapshots.take_snapshot(state.snapshots, self.app, stack.volume_paths(self.app),
                                        commit=current, allowed_root=Path(engine.data_root()))
        except CcciError as exc:
            # No snapshot, no upgrade: bring the untouched current version back.
            why = exc.message
            try:
                self.deploy_and_check(current, "resume")
            except CcciError as again:
                why += f"; redeploying {self.label(current)} failed too: {again.message}"
            return self.report("failed", f"upgrade of {self.app} {step} not attempted: the snapshot "
                                         f"failed: {why}", current)
        try:
            self.deploy_and_check(head, "upgrade")
        except CcciError as exc:
            return self.roll_back(current, head, step, exc)
        return self.report("upgraded", f"{self.app} upgraded {step} and healthy", head)

    def roll_back(self, current: str, head: str, step: str, cause: CcciError) -> ReconcileReport:
        state = self.ctx.state
        log.error("upgrade of %s %s failed: %s; rolling back", self.app, step, cause.message)
        try:
            with phase(self.ctx, self.result, "restore"):
                stack.undeploy(self.app, remove_volumes=False)
                restored = snapshots.restore_snapshot(
                    state.snapshots, self.app, stack.volume_paths(self.app),
                    allowed_root=Path(engine.data_root()))
            self.deploy_and_check(current, "rollback")
        except CcciError as exc:
            return self.report("failed", f"upgrade of {self.app} {step} failed ({cause.message}), and so "
                                         f"did the rollback: {exc.message}", None)
        changed = restored.created + restored.rewritten + restored.removed
        return self.report("rolled-back", f"upgrade of {self.app} {step} failed ({cause.message}); rolled "
                                          f"back to {self.label(current)} with its data restored from "
                                          f"the snapshot ({changed} files put back)", current)


def reconcile(ctx: Context, *, approve: str | None = None) -> ReconcileReport:
    """Converge the warm Keycloak: external, check its health; managed, deploy it and move it
    along its recipe's tracked line behind the safety and health gates."""
    kc = ctx.settings.warm.keycloak
    if kc.mode == "off":
        return ReconcileReport("off", "warm.keycloak.mode is off: there is no warm Keycloak to reconcile")
    endpoint, why = warm_endpoint(ctx)
    if endpoint is None:
        raise BadInput(f"ccci.yaml: at 'warm.keycloak': {why}")
    if kc.mode == "external":
        problem = endpoint_problem(endpoint)
        if problem is not None:
            message = f"the external Keycloak at {endpoint.url} is not healthy: {problem}"
            raise_alert(ctx.state, WARM_DOWN_ALERT, message)
            return ReconcileReport("unhealthy", message)
        clear_alert(ctx.state, WARM_DOWN_ALERT)
        return ReconcileReport("healthy", f"the external Keycloak at {endpoint.url} is healthy")
    reconciler = _Reconciler(ctx, endpoint, keycloak_recipe(ctx))
    with (exclusive(ctx.state.app_lock(reconciler.app), timeout=0, what=f"the live Keycloak {reconciler.app}"),
          shared(ctx.state.prune_gate)):
        return reconciler.run(approve)
