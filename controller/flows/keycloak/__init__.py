"""Keycloak for the flows: where it is, deploying it, gating its upgrades, and per-run realms."""

from controller.flows.keycloak.endpoint import KeycloakEndpoint, warm_endpoint
from controller.flows.keycloak.gates import GateVerdict, safety_gate
from controller.flows.keycloak.realms import RealmGrant, prepare_realm, reap_stale_realms, release_realm
from controller.flows.keycloak.reconcile import ReconcileReport, reconcile

__all__ = [
    "GateVerdict",
    "KeycloakEndpoint",
    "RealmGrant",
    "ReconcileReport",
    "prepare_realm",
    "reap_stale_realms",
    "reconcile",
    "release_realm",
    "safety_gate",
    "warm_endpoint",
]
