"""Which host of the fleet takes a run: quick runs go where the recipe's current snapshot is;
which hosts keep a recipe warm; a claim's deadline. The decisions are pure; the readers beside
them gather what they decide on from the registry and this host's state dir."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller import snapshots
from controller.flows.context import Context
from controller.registry.documents import Request, SnapshotIndex
from controller.registry.index import host_of
from controller.registry.settings import Settings
from controller.util import names
from controller.util.timeutil import iso, parse_iso

UNMIGRATED = "(a host not yet upgraded)"  # who holds a single-host entry that is not ours

HERE = "here"  # this host holds a current last-known-good: claim it
WAIT = "wait"  # this host will hold one soon (its rewarm is queued): leave it pending here
ELSEWHERE = "elsewhere"  # other hosts hold one: theirs to claim, until quick.host_wait_s
NOWHERE = "nowhere"  # no host holds one: quick.no_canonical decides at once


@dataclass(frozen=True)
class Placement:
    where: str  # HERE | WAIT | ELSEWHERE | NOWHERE
    why: str = ""  # a sentence for the log and a fallback's result
    holders: tuple[str, ...] = ()  # the hosts holding a current last-known-good


def place_quick(host: str, known_good: str, entries: Mapping[str, SnapshotIndex], local_manifest: str | None,
                *, rewarm_queued: bool = False) -> Placement:
    """Pure: where a quick run of a recipe whose canonical is `known_good` goes, given each host's
    index entry for its warm app and the manifest of this host's last-known-good on disk."""
    holders = tuple(sorted(h for h, entry in entries.items() if entry.commit == known_good))
    mine = entries.get(host)
    on_disk = mine is not None and local_manifest is not None and mine.manifest_sha256 == local_manifest
    if on_disk and mine is not None and mine.commit == known_good:
        return Placement(HERE, holders=holders)
    if on_disk and rewarm_queued:
        return Placement(WAIT, f"a rewarm to the known-good {known_good[:12]} is queued on {host}",
                         holders=holders)
    others = tuple(h for h in holders if h != host)
    if others:
        return Placement(ELSEWHERE, f"the last-known-good snapshot of {known_good[:12]} is on "
                         f"{', '.join(others)}", holders=others)
    return Placement(NOWHERE, f"no host holds a last-known-good snapshot of the known-good {known_good[:12]}")


def waited_out(run_id: str, now: dt.datetime, wait_s: float) -> bool:
    """A request has waited `wait_s` since it was filed (its run id's time) — or its id says no time."""
    match = names.RUN_ID_RE.match(run_id)
    if not match:
        return True
    filed = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    return (now - filed).total_seconds() >= wait_s


def keeps_warm(settings: Settings, recipe: str, host: str, promoted_on: str | None) -> bool:
    """Pure: whether `host` keeps `recipe`'s canonical warm — named in `recipes.<r>.warm_hosts`,
    or, when that is empty, the host that ran the promoting cold run."""
    configured = settings.recipes[recipe].warm_hosts if recipe in settings.recipes else ()
    if configured:
        return host in configured
    return promoted_on == host


def deadline(settings: Settings, recipe: str | None, started_at: str, mode: str | None = None) -> str:
    """A claim's deadline: its start + the recipe's timeout_s + serve.deadline_grace_s; an upgrade
    run has timeout_s for each of its rows."""
    timeout = settings.recipes[recipe].timeout_s if recipe in settings.recipes else 0
    if mode == "upgrade" and recipe in settings.recipes:
        timeout *= settings.upgrade_from_tags(recipe)
    return iso(parse_iso(started_at) + dt.timedelta(seconds=timeout + settings.serve.deadline_grace_s))


def host_of_result(doc: Mapping[str, Any] | None) -> str | None:
    """The host a result ran on (`host`, or the host part of `controller` before the fleet)."""
    return host_of(dict(doc)) if doc else None


# -- readers -------------------------------------------------------------------------------------

def local_manifest(ctx: Context, app: str) -> str | None:
    info = snapshots.current_snapshot(ctx.state.snapshots, app)
    return info.manifest_sha256 if info is not None else None


def index_entries(ctx: Context, app: str) -> dict[str, SnapshotIndex]:
    """{host: entry} for `app` over the fleet. A single-host entry not yet moved under its
    owner's name counts as this host's when this host's disk has those bytes."""
    entries = ctx.registry.snapshot_indexes(app)
    legacy = ctx.registry.legacy_snapshot_index(app)
    if legacy is not None and ctx.host not in entries:
        mine = legacy.manifest_sha256 == local_manifest(ctx, app)
        entries[ctx.host if mine else UNMIGRATED] = legacy
    return entries


def own_index(ctx: Context, app: str) -> SnapshotIndex | None:
    """This host's entry for `app` (or the single-host one, when its bytes are on this disk)."""
    return index_entries(ctx, app).get(ctx.host)


def quick_placement(ctx: Context, request: Request) -> Placement:
    """Where `request` (a quick run whose recipe has a canonical) goes."""
    app = names.warm_app(request.recipe)
    current = ctx.registry.canonical(request.recipe)
    if current is None:
        return Placement(NOWHERE, f"{request.recipe} has no canonical")
    return place_quick(ctx.host, current.known_good, index_entries(ctx, app), local_manifest(ctx, app),
                       rewarm_queued=ctx.state.rewarm_request(request.recipe).exists())
