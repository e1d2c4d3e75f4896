"""The live-warm infra (DESIGN §4): where the shared Keycloak is, how a Keycloak recipe is
deployed, and `ccci warm reconcile` with its safety gate and health gate."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from controller import snapshots
from controller.flows import deployment
from controller.flows.context import Context, phase
from controller.flows.deployment import Deployment
from controller.registry import recipes
from controller.registry.results import Phase, RunResult
from controller.registry.settings import KeycloakSettings, RecipeSettings
from controller.runtime import engine, images, stack
from controller.sso import client as sso_client
from controller.sso.client import KeycloakAdminClient
from controller.sso.naming import in_use, is_ours
from controller.util import inflight
from controller.util.alerts import clear_alert, raise_alert
from controller.util.errors import BadInput, CcciError, ExternalError
from controller.util.locks import exclusive, shared
from controller.util.log import register_secret
from controller.util.paths import StateDir, check_app_name
from controller.util.timeutil import Deadline, now_iso

log = logging.getLogger(__name__)

# The attachable overlay network a Keycloak recipe joins so that stacks reach it by service
# name; the runtime creates it (labelled ccci.infra=true) the first time a recipe names it.
SSO_NETWORK = "ccci-sso"
# The file the Keycloak recipe turns into its admin-password secret; written for a deploy
# and removed right after, so the password never sits in git or in a service's env.
ADMIN_SECRET_FILE = "admin_password"
VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")
MIGRATION_FLAG_RE = re.compile(r"manual[ -]migration|breaking", re.IGNORECASE)
NOTES_DIR = "release"
MAX_NOTES_BYTES = 64 * 1024
WARM_DOWN_ALERT = "warm-keycloak-down"
OK_OUTCOMES = ("off", "healthy", "deployed", "up-to-date", "upgraded", "deferred")

Version = tuple[int, int, int]


# -- where Keycloak is ------------------------------------------------------------------------

@dataclass(frozen=True)
class KeycloakEndpoint:
    """One Keycloak the controller can administer."""

    url: str  # where the controller and host-side asserts reach it
    stack_url: str | None  # where a stack's containers reach it; None: not reachable from them
    admin_user: str
    admin_password: str = field(repr=False)
    source: str = "external"  # external | managed | co-deployed
    app: str | None = None  # the managed or co-deployed app

    def client(self) -> KeycloakAdminClient:
        return KeycloakAdminClient(self.url, self.admin_user, self.admin_password)


def admin_password(kc: KeycloakSettings) -> str | None:
    """The admin password from its secret file or env, masked in every log line from now on."""
    password = kc.admin_password()
    if password:
        register_secret(password)
    return password or None


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_url(app: str, recipe: RecipeSettings) -> str:
    """The Keycloak service of `app` as containers on the SSO network reach it."""
    service, port = recipe.http.resolve()
    return f"http://{app}_{service}:{port}"


def managed_url(kc: KeycloakSettings) -> str:
    return (kc.url or f"http://127.0.0.1:{kc.port}").rstrip("/")


def warm_endpoint(ctx: Context) -> tuple[KeycloakEndpoint | None, str]:
    """The configured warm Keycloak, or None and the reason there is none."""
    kc = ctx.settings.warm.keycloak
    if kc.mode == "off":
        return None, "no warm Keycloak is configured (warm.keycloak.mode is off)"
    password = admin_password(kc)
    if not password:
        where = kc.admin_secret_file or f"${kc.admin_secret_env}"
        return None, f"the warm Keycloak's admin password is not available from {where}"
    if kc.mode == "external":
        if not kc.url:
            return None, "warm.keycloak.mode is external but warm.keycloak.url is not set"
        url = kc.url.rstrip("/")
        # A loopback URL serves the host only; a real one (https://sso.example.org) serves all.
        return KeycloakEndpoint(url, None if is_loopback(url) else url, kc.admin_user, password,
                                "external"), ""
    recipe = ctx.settings.recipes.get(kc.recipe)
    return KeycloakEndpoint(managed_url(kc), service_url(kc.app, recipe) if recipe else None,
                            kc.admin_user, password, "managed", kc.app), ""


def keycloak_recipe(ctx: Context) -> RecipeSettings:
    name = ctx.settings.warm.keycloak.recipe
    if name not in ctx.settings.recipes:
        raise BadInput(f"ccci.yaml: at 'warm.keycloak.recipe': {name!r} is not under 'recipes'; "
                       "deploying a Keycloak needs its recipe there, with a source")
    return ctx.settings.recipes[name]


def endpoint_problem(endpoint: KeycloakEndpoint) -> str | None:
    """None when it answers and takes the admin credentials; else why not. A permanent
    refusal (wrong password) raises: that is a configuration error, not an outage."""
    problem = sso_client.probe_ready(endpoint.url)
    if problem is not None:
        return problem
    try:
        endpoint.client().check_login()
    except ExternalError as exc:
        if not exc.temporary:
            raise
        return exc.message
    return None


# -- deploying a Keycloak recipe ----------------------------------------------------------------

def _secret_key(state: StateDir) -> bytes:
    """A random local key: secret versions derive from it, so they reveal nothing."""
    path = state.root / "infra" / "secret.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".secret.key.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        # link() creates the name only if absent, and only with the whole key in it.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return path.read_text().strip().encode()


def admin_secret_version(state: StateDir, password: str) -> str:
    """Swarm secrets are immutable: a new password gets a new secret name, the same one
    keeps it (so a redeploy does not fail on a changed secret)."""
    return "s" + hmac.new(_secret_key(state), password.encode(), hashlib.sha256).hexdigest()[:12]


def deploy_keycloak(ctx: Context, result: RunResult, dep: Deployment, password: str, *,
                    name: str) -> None:
    """Deploy the Keycloak recipe with its admin password as a swarm secret."""
    secret_file = dep.checkout / ADMIN_SECRET_FILE
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password)
    dep.extra_env.update({
        "ADMIN_USER": ctx.settings.warm.keycloak.admin_user,
        "SECRET_ADMIN_PASSWORD_VERSION": admin_secret_version(ctx.state, password),
    })
    try:
        deployment.deploy_app(ctx, result, dep, name=name)
    finally:
        secret_file.unlink(missing_ok=True)


def wait_keycloak(ctx: Context, result: RunResult, dep: Deployment, endpoint: KeycloakEndpoint,
                  deadline: Deadline, *, name: str, baseline: stack.AppState | None = None) -> None:
    """Converged (its healthcheck passed), answering, and taking the admin credentials."""
    with phase(ctx, result, name):
        stack.wait_converged(dep.app, deadline, stability_s=dep.recipe.stability_s,
                             expected_commit=dep.commit, baseline=baseline)
        sso_client.wait_ready(endpoint.url, deadline)
        endpoint.client().check_login()


# -- the safety gate (pure) ---------------------------------------------------------------------

def parse_version(tag: str) -> Version | None:
    match = VERSION_RE.match(tag)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def release_version(tags: list[str]) -> Version | None:
    """The highest version among a commit's tags (Co-op Cloud tags `1.2.0+26.0.5`)."""
    versions = [v for v in (parse_version(t) for t in tags) if v is not None]
    return max(versions) if versions else None


def show(version: Version | None) -> str:
    return ".".join(map(str, version)) if version else "an untagged commit"


def notes_in_range(names: list[str], current: Version | None, target: Version | None) -> list[str]:
    """Release-note files that speak for the step current → target: `next`, and each
    version past the current one up to the target (only the target's when current is unknown)."""
    chosen = []
    for name in names:
        version = parse_version(name)
        in_step = version is not None and target is not None and version <= target and (
            version > current if current is not None else version == target)
        if name == "next" or in_step:
            chosen.append(name)
    return sorted(chosen)


@dataclass(frozen=True)
class GateVerdict:
    hold: bool
    reason: str


def safety_gate(current: Version | None, target: Version | None, notes: dict[str, str]) -> GateVerdict:
    """Hold a major version bump, or release notes that flag a manual migration."""
    if current is not None and target is not None and target[0] > current[0]:
        return GateVerdict(True, f"a major version bump ({show(current)} → {show(target)})")
    for name, text in sorted(notes.items()):
        for line in text.splitlines():
            if MIGRATION_FLAG_RE.search(line):
                return GateVerdict(True, f"release notes {NOTES_DIR}/{name} flag a manual migration: "
                                         f"{line.strip()[:200]!r}")
    return GateVerdict(False, f"{show(current)} → {show(target)}")


def read_release_notes(checkout: Path, current: Version | None, target: Version | None) -> dict[str, str]:
    where = checkout / NOTES_DIR
    if not where.is_dir():
        return {}
    names = [p.name for p in where.iterdir() if p.is_file() and not p.is_symlink()]
    out = {}
    for name in notes_in_range(names, current, target):
        with (where / name).open("rb") as handle:
            out[name] = handle.read(MAX_NOTES_BYTES).decode(errors="replace")
    return out


# -- reconcile ----------------------------------------------------------------------------------

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


def _state_path(state: StateDir, app: str) -> Path:
    return state.root / "infra" / f"{app}.json"


def read_deployed(state: StateDir, app: str) -> dict[str, str] | None:
    """What the controller last deployed as `app` and saw healthy."""
    try:
        doc = json.loads(_state_path(state, app).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("commit"), str) else None


def _write_deployed(state: StateDir, app: str, commit: str, version: Version | None) -> None:
    path = _state_path(state, app)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"app": app, "commit": commit, "version": show(version) if version else None,
                               "images": sorted(images.service_image_refs(app)),  # kept by prune
                               "deployed_at": now_iso()}, sort_keys=True))
    os.replace(tmp, path)


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
        return f"{show(version)} ({commit[:12]})" if version else commit[:12]

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
