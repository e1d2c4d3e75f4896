"""Pure rules for per-run realms: their names, who owns one, which are stale, which are safe to delete."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from controller.util.errors import BadInput
from controller.util.names import RUN_ID_RE, check_recipe_name, run_hex

# `<recipe>-<6 hex of the run>`: the only realms the controller ever creates or deletes.
REALM_RE = re.compile(r"^[a-z0-9][a-z0-9-]*-[0-9a-f]{6}$")
PROTECTED_REALMS = frozenset({"master"})
# Realm attributes the controller stores on the realms it creates.
RUN_ATTRIBUTE = "ccci.run"
OWNER_ATTRIBUTE = "ccci.owner"


def realm_name(recipe: str, run_id: str) -> str:
    """The realm of one run: `<recipe>-<6 hex that end the run id>`."""
    check_recipe_name(recipe)
    name = f"{recipe}-{run_hex(run_id)}"
    if not REALM_RE.match(name):
        raise BadInput(f"run {run_id!r}: does not end in 6 hex digits, so it has no realm name")
    return name


def check_deletable(name: str) -> str:
    """Refuse to delete `master` or any realm whose name is not a per-run realm's."""
    if name in PROTECTED_REALMS or not REALM_RE.match(name):
        raise BadInput(f"refusing to delete realm {name!r}: only per-run realms "
                       "(<recipe>-<6 hex>) are ever deleted, never master or a foreign realm")
    return name


def run_names_realm(run_id: str, realm: str) -> bool:
    """True when `run_id` is a well-formed run id whose realm is `realm`."""
    match = RUN_ID_RE.match(run_id)
    return match is not None and f"{match.group(2)}-{match.group(3)}" == realm


@dataclass(frozen=True)
class RealmFacts:
    """What the reaper needs to know of one realm on the server."""

    name: str
    run: str | None  # the `ccci.run` attribute
    owner: str | None  # the `ccci.owner` attribute: which controller state dir created it

    @classmethod
    def from_representation(cls, rep: dict[str, object]) -> RealmFacts:
        attributes = rep.get("attributes")
        attrs = attributes if isinstance(attributes, dict) else {}
        run = attrs.get(RUN_ATTRIBUTE)
        owner = attrs.get(OWNER_ATTRIBUTE)
        return cls(str(rep.get("realm", "")),
                   run if isinstance(run, str) else None,
                   owner if isinstance(owner, str) else None)


def is_ours(realm: RealmFacts, owner: str) -> bool:
    """A realm this controller created: the per-run name, our owner mark, and a run id that
    names exactly this realm. Anything else is foreign, even when its name fits the scheme."""
    return (realm.name not in PROTECTED_REALMS and bool(REALM_RE.match(realm.name))
            and realm.owner == owner and realm.run is not None
            and run_names_realm(realm.run, realm.name))


def in_use(realm: RealmFacts, in_flight: Iterable[str]) -> bool:
    """Its run is in flight: by the stored run id, or by any in-flight run that names it."""
    live = set(in_flight)
    return (realm.run in live) or any(run_names_realm(run, realm.name) for run in live)


def stale_realms(realms: Iterable[RealmFacts], in_flight: Iterable[str], owner: str) -> list[str]:
    """Pure: the realms the reaper deletes — ours, and their run no longer in flight."""
    live = set(in_flight)
    return sorted(r.name for r in realms if is_ours(r, owner) and not in_use(r, live))
