"""Deploying a Keycloak recipe: its admin secret, its health wait, and a run's own co-deployed one."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets

from controller.flows import deployment
from controller.flows.context import Context, phase
from controller.flows.deployment import Deployment
from controller.flows.keycloak.endpoint import KeycloakEndpoint, keycloak_recipe, service_url
from controller.registry import recipes
from controller.registry.results import RunResult
from controller.runtime import probe, stack
from controller.sso import client as sso_client
from controller.sso.naming import realm_name
from controller.util.errors import BadInput, CcciError
from controller.util.log import register_secret
from controller.util.paths import StateDir
from controller.util.timeutil import Deadline

log = logging.getLogger(__name__)

# The file the Keycloak recipe turns into its admin-password secret; written for a deploy
# and removed right after, so the password never sits in git or in a service's env.
ADMIN_SECRET_FILE = "admin_password"
CO_DEPLOY_DEADLINE_S = 300  # a co-deployed Keycloak's start (about 30-60 s) plus a margin


def _secret_key(state: StateDir) -> bytes:
    """A random local key: secret versions derive from it, so they reveal nothing."""
    path = state.infra_secret_key
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


def co_deploy_keycloak(ctx: Context, result: RunResult, recipe_name: str, run_id: str) -> KeycloakEndpoint:
    """A cold Keycloak for this run only, `<recipe>-<hex>-kc` (even for a quick run, whose own
    app is warm-*): labelled cold with the run id, so the run's teardown and the start-up
    cleanup of dead runs remove it like any cold app."""
    try:
        recipe = keycloak_recipe(ctx)
    except BadInput as exc:
        raise CcciError(f"cannot co-deploy a Keycloak: {exc.message}", cause="infra") from exc
    kc_app = f"{realm_name(recipe_name, run_id)}-kc"
    work = deployment.workdir(ctx, run_id) / "keycloak"
    password = secrets.token_urlsafe(24)
    register_secret(password)
    with phase(ctx, result, "sso-keycloak-fetch"):
        recipes.fetch_recipe(ctx.state, recipe)
        canonical = ctx.registry.canonical(recipe.name)
        commit = canonical.known_good if canonical else recipes.head_of_line(ctx.state, recipe)
        if commit is None:
            raise CcciError(f"cannot co-deploy a Keycloak: recipe {recipe.name!r} has no known-good "
                            f"commit and no tracked line {recipe.track!r}", cause="infra")
        recipes.export_commit(ctx.state, recipe, commit, work)
    dep = Deployment(recipe=recipe, app=kc_app, mode="cold", run=run_id, commit=commit,
                     domain=ctx.settings.domain(kc_app), host_port=probe.free_port(), checkout=work,
                     owner=ctx.state.owner_id)
    endpoint = KeycloakEndpoint(dep.url, service_url(kc_app, recipe), ctx.settings.warm.keycloak.admin_user,
                                password, "co-deployed", kc_app)
    try:
        deploy_keycloak(ctx, result, dep, password, name="sso-keycloak-deploy")
        wait_keycloak(ctx, result, dep, endpoint, Deadline(min(CO_DEPLOY_DEADLINE_S, recipe.timeout_s)),
                      name="sso-keycloak-ready")
    except BaseException:
        undeploy_co_deployed(ctx, result, kc_app)
        raise
    finally:
        deployment.remove_workdir(work)  # the deployed stack no longer needs its checkout
    log.info("co-deployed Keycloak %s for run %s at %s", kc_app, run_id, endpoint.url)
    return endpoint


def undeploy_co_deployed(ctx: Context, result: RunResult, kc_app: str) -> None:
    """Best effort: the run is already failing, and the start-up cleanup removes what is left."""
    try:
        deployment.undeploy_app(ctx, result, kc_app, remove_volumes=True, name="sso-keycloak-teardown")
    except CcciError as exc:
        log.error("could not remove the co-deployed Keycloak %s: %s (the start-up cleanup will)",
                  kc_app, exc.message)
