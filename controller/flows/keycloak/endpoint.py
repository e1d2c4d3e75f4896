"""Where the Keycloak a run or the reconciler talks to is, and whether it is usable now."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from controller.flows.context import Context
from controller.registry.settings import KeycloakSettings, RecipeSettings
from controller.sso import client as sso_client
from controller.sso.client import KeycloakAdminClient
from controller.util.alerts import clear_alert, raise_alert
from controller.util.errors import BadInput, ExternalError
from controller.util.log import register_secret

# The attachable overlay network a Keycloak recipe joins so that stacks reach it by service
# name; the runtime creates it (labelled ccci.infra=true) the first time a recipe names it.
SSO_NETWORK = "ccci-sso"
WARM_DOWN_ALERT = "warm-keycloak-down"


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


def usable_warm_endpoint(ctx: Context) -> tuple[KeycloakEndpoint | None, str]:
    """The warm Keycloak when it is configured and healthy; else None and why."""
    endpoint, why = warm_endpoint(ctx)
    if endpoint is None:
        return None, why
    problem = endpoint_problem(endpoint)
    if problem is not None:
        message = f"the warm Keycloak ({endpoint.source}) is not healthy: {problem}"
        raise_alert(ctx.state, WARM_DOWN_ALERT, message + "; runs co-deploy their own until it is back")
        return None, message
    clear_alert(ctx.state, WARM_DOWN_ALERT)
    return endpoint, ""
