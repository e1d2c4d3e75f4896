"""Per-run SSO realms: on the warm Keycloak or on one co-deployed for the run; the stale-realm reaper."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from controller.flows import deployment
from controller.flows.context import Context, phase
from controller.flows.keycloak.deploy import co_deploy_keycloak, undeploy_co_deployed
from controller.flows.keycloak.endpoint import (
    SSO_NETWORK,
    KeycloakEndpoint,
    usable_warm_endpoint,
    warm_endpoint,
)
from controller.registry.results import RunResult
from controller.sso.naming import stale_realms
from controller.sso.realms import RealmRequest, new_realm_request, realm_representation
from controller.util import inflight
from controller.util.errors import CcciError
from controller.util.log import register_secret

log = logging.getLogger(__name__)


@dataclass
class RealmGrant:
    """One run's realm and how to reach it; `env()` goes to the stack and the custom assert."""

    realm: str
    run_id: str
    url: str
    stack_url: str | None
    issuer: str
    client_id: str
    public_client_id: str
    user: str
    source: str  # external | managed | co-deployed
    client_secret: str = field(repr=False)
    password: str = field(repr=False)
    endpoint: KeycloakEndpoint = field(repr=False)
    co_deployed_app: str | None = None

    def env(self) -> dict[str, str]:
        return {
            "CCCI_SSO_URL": self.url,
            "CCCI_KEYCLOAK_URL": self.url,
            "CCCI_SSO_STACK_URL": self.stack_url or "",
            "CCCI_SSO_NETWORK": SSO_NETWORK if self.source != "external" else "",
            "CCCI_SSO_SOURCE": self.source,
            "CCCI_SSO_REALM": self.realm,
            "CCCI_SSO_ISSUER": self.issuer,
            "CCCI_SSO_CLIENT_ID": self.client_id,
            "CCCI_SSO_CLIENT_SECRET": self.client_secret,
            "CCCI_SSO_PUBLIC_CLIENT_ID": self.public_client_id,
            "CCCI_SSO_USER": self.user,
            "CCCI_SSO_PASSWORD": self.password,
        }

    def facts(self) -> dict[str, Any]:
        """For the result document: no secrets."""
        return {
            "realm": self.realm,
            "keycloak": self.source,
            "url": self.url,
            "stack_url": self.stack_url,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "user": self.user,
            "co_deployed_app": self.co_deployed_app,
        }


def _grant(req: RealmRequest, endpoint: KeycloakEndpoint) -> RealmGrant:
    return RealmGrant(realm=req.name, run_id=req.run_id, url=endpoint.url, stack_url=endpoint.stack_url,
                      issuer=req.issuer, client_id=req.client_id, public_client_id=req.public_client_id,
                      user=req.username, source=endpoint.source, client_secret=req.client_secret,
                      password=req.password, endpoint=endpoint,
                      co_deployed_app=endpoint.app if endpoint.source == "co-deployed" else None)


def prepare_realm(ctx: Context, result: RunResult, recipe: str, run_id: str, app: str) -> RealmGrant:
    """Create the run's realm `<recipe>-<hex>` with its OIDC clients and test user."""
    endpoint, why = usable_warm_endpoint(ctx)
    fallback = None
    if endpoint is None:
        kc = ctx.settings.warm.keycloak
        if kc.fallback != "co-deploy":
            raise CcciError(f"recipe {recipe!r} needs SSO, but {why} (warm.keycloak.fallback is "
                            f"{kc.fallback})", cause="infra")
        log.warning("%s: co-deploying a Keycloak for run %s", why, run_id)
        fallback = why
        endpoint = co_deploy_keycloak(ctx, result, recipe, run_id)
    domain = ctx.settings.domain(app)
    req = new_realm_request(recipe, run_id, owner=ctx.state.owner_id, frontend_url=endpoint.url,
                            domain=domain, redirect_uris=(f"https://{domain}/*", "http://127.0.0.1:*"))
    register_secret(req.client_secret)
    register_secret(req.password)
    try:
        with phase(ctx, result, "sso-realm"):
            endpoint.client().create_realm(realm_representation(req))
    except BaseException:
        if endpoint.source == "co-deployed" and endpoint.app:
            undeploy_co_deployed(ctx, result, endpoint.app)
        raise
    grant = _grant(req, endpoint)
    result.sso = {**grant.facts(), "fallback": fallback, "released": False}
    log.info("realm %s ready on %s (%s)", grant.realm, grant.url, grant.source)
    return grant


def release_realm(ctx: Context, result: RunResult, grant: RealmGrant) -> None:
    """Delete the run's realm (idempotent), or the whole co-deployed Keycloak with it."""
    if grant.co_deployed_app:
        deployment.undeploy_app(ctx, result, grant.co_deployed_app, remove_volumes=True,
                                name="sso-keycloak-teardown")
    else:
        with phase(ctx, result, "sso-release"):
            grant.endpoint.client().delete_realm(grant.realm)
    if result.sso is not None:
        result.sso["released"] = True


def reap_stale_realms(ctx: Context) -> list[str]:
    """Delete the per-run realms this controller created whose run is no longer in flight;
    never master, never a realm someone else made. Returns the names deleted."""
    endpoint, why = warm_endpoint(ctx)
    if endpoint is None:
        if ctx.settings.warm.keycloak.mode == "off":
            return []
        raise CcciError(f"cannot reap realms: {why}", cause="infra")
    client = endpoint.client()
    # Realms first, markers second: a run marks itself in flight before it creates its realm,
    # so every realm listed here whose run still lives has a marker by the time they are read.
    realms = client.realms()
    live = inflight.in_flight_runs(ctx.state)
    deleted = []
    for name in stale_realms(realms, live, ctx.state.owner_id):
        if client.delete_realm(name):
            deleted.append(name)
            log.warning("reaped realm %s: its run is no longer in flight", name)
    return deleted
