"""Pure construction of a per-run realm: its credentials and the document Keycloak imports."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from controller.sso.naming import OWNER_ATTRIBUTE, RUN_ATTRIBUTE, realm_name

TEST_USER = "ccci-user"


@dataclass(frozen=True)
class RealmRequest:
    """Everything one run's realm holds. `client_secret` and `password` are secrets."""

    name: str
    run_id: str
    owner: str
    frontend_url: str  # fixes the issuer, whichever address a client used
    client_id: str
    public_client_id: str
    client_secret: str
    username: str
    password: str
    email: str
    redirect_uris: tuple[str, ...]

    @property
    def issuer(self) -> str:
        return f"{self.frontend_url.rstrip('/')}/realms/{self.name}"


def new_realm_request(recipe: str, run_id: str, *, owner: str, frontend_url: str,
                      domain: str, redirect_uris: tuple[str, ...]) -> RealmRequest:
    """A realm for the run with fresh random credentials."""
    return RealmRequest(
        name=realm_name(recipe, run_id),
        run_id=run_id,
        owner=owner,
        frontend_url=frontend_url.rstrip("/"),
        client_id=recipe,
        public_client_id=f"{recipe}-public",
        client_secret=secrets.token_urlsafe(24),
        username=TEST_USER,
        password=secrets.token_urlsafe(18),
        email=f"{TEST_USER}@{domain}",
        redirect_uris=redirect_uris,
    )


def realm_representation(req: RealmRequest) -> dict[str, Any]:
    """The realm, its two OIDC clients and its test user, created in one import: a realm
    either exists complete or not at all."""
    common = {
        "enabled": True,
        "protocol": "openid-connect",
        "standardFlowEnabled": True,
        "directAccessGrantsEnabled": True,
        "redirectUris": list(req.redirect_uris),
        "webOrigins": ["+"],
    }
    return {
        "realm": req.name,
        "enabled": True,
        "displayName": f"ccci run {req.run_id}",
        "attributes": {
            RUN_ATTRIBUTE: req.run_id,
            OWNER_ATTRIBUTE: req.owner,
            "frontendUrl": req.frontend_url,
        },
        "clients": [
            {**common, "clientId": req.client_id, "publicClient": False,
             "clientAuthenticatorType": "client-secret", "secret": req.client_secret},
            {**common, "clientId": req.public_client_id, "publicClient": True},
        ],
        "users": [{
            "username": req.username,
            "enabled": True,
            "email": req.email,
            "emailVerified": True,
            "firstName": "ccci",
            "lastName": "test user",
            "credentials": [{"type": "password", "value": req.password, "temporary": False}],
        }],
    }
