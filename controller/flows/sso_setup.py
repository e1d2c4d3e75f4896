"""Per-run SSO realms for recipes with `sso: keycloak` (filled in by the sso layer)."""

from __future__ import annotations

from dataclasses import dataclass

from controller.flows.context import Context
from controller.registry.results import RunResult
from controller.util.errors import CcciError


@dataclass
class RealmGrant:
    realm: str

    def env(self) -> dict[str, str]:
        return {}


def prepare_realm(ctx: Context, result: RunResult, recipe: str, run_id: str, app: str) -> RealmGrant:
    raise CcciError(f"recipe {recipe!r} needs SSO, but this controller has no Keycloak support yet",
                    cause="infra")


def release_realm(ctx: Context, result: RunResult, realm: RealmGrant) -> None:
    return None
