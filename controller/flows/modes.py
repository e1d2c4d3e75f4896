"""The mode table: every kind of run the controller knows, and what each one may do.

A new mode is one entry here: its runner, the `authority.<key>` of ccci.yaml that may ask for
it, whether its verdict gates a merge, the label its commits carry, and what runs instead when
its precondition is missing. A mode that is not in the table has no authority at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controller.flows import cold, quick, rewarm, upgrade
from controller.flows.context import Context, Run
from controller.flows.fleet.placement import Placement, quick_placement
from controller.registry.documents import Request
from controller.registry.settings import Settings
from controller.util.errors import BadInput

# A runner takes a claimed run to its verdict, filling in `run.result` as it goes; it raises
# the project's errors for what ends a run early (the lifecycle turns them into a verdict).
Runner = Callable[[Context, Run], None]

REJECT_LABEL = "reject"


@dataclass(frozen=True)
class Fallback:
    """What runs instead when a mode's precondition is missing, if ccci.yaml allows it."""

    mode: str
    reason: str  # the result's `fallback` field
    setting: str  # the ccci.yaml key that decides, named in a rejection
    read: Callable[[Settings], str]  # its value
    enabled_by: str  # the value that allows the fallback
    # The result's `fallback` when the precondition holds but no host of the fleet can take it.
    unplaced_reason: str = "no-warm-host"

    def allowed(self, settings: Settings) -> bool:
        return self.read(settings) == self.enabled_by


@dataclass(frozen=True)
class Mode:
    name: str
    label: str  # commit messages start with `[<label>]`
    authority: str | None  # authority.<key> naming who may request it; None: only the controller
    gates: bool  # its verdict may be required by branch protection (only cold's)
    proves: str  # one sentence: what a pass means
    runner: Runner | None  # None: the mode files requests, it runs nothing itself
    # None when the mode can always run; else why not (e.g. "canonical") for this recipe.
    precondition: Callable[[Context, str], str | None] | None = None
    fallback: Fallback | None = None
    # None: any host may claim it. Else which host of the fleet takes it (fleet/placement.py);
    # a run no host can take falls back like a missing precondition.
    placement: Callable[[Context, Request], Placement] | None = None


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("cold", "cold", authority="cold", gates=True, runner=cold.run_cold,
         proves="a fresh install of this commit deploys and passes its asserts"),
    Mode("quick", "quick", authority="quick", gates=False, runner=quick.run_quick,
         proves="the upgrade from the known-good works on real data (informational, never gates)",
         precondition=quick.missing_for_quick,
         fallback=Fallback("cold", "no-canonical", "quick.no_canonical",
                           lambda settings: settings.quick.no_canonical, "fallback-cold"),
         placement=quick_placement),
    # Never promotes, never touches a warm app: throw-away apps like cold's, one per row in turn.
    Mode("upgrade", "upgrade", authority="upgrade", gates=False, runner=upgrade.run_upgrade,
         proves="the upgrade to this commit from each of the recipe's latest releases works on the "
                "data that release initialised (informational, never gates)"),
    Mode("rewarm", "rewarm", authority=None, gates=False, runner=rewarm.run_rewarm,
         proves="the known-good redeploys on its warm data and a new snapshot was taken"),
    # The sweep files cold requests as `requested_by: sweep`; authority.cold must allow it.
    Mode("sweep", "sweep", authority="cold", gates=False, runner=None,
         proves="each recipe's tracked line is re-verified cold"),
)}

# The registry format (schemas.REQUEST_MODES) accepts exactly these; a test holds them equal.
REQUESTABLE = tuple(name for name, m in MODES.items() if m.authority is not None and m.runner is not None)


def mode(name: str | None, *, where: str = "mode") -> Mode:
    """The table's entry, or BadInput naming what exists."""
    found = MODES.get(name or "")
    if found is None:
        raise BadInput(f"{where}: {name!r} is not one of {', '.join(MODES)}")
    return found


def requestable(name: str, *, where: str) -> Mode:
    """A mode a request may ask for (cold, quick, upgrade), or BadInput."""
    if name not in REQUESTABLE:
        raise BadInput(f"{where}: {name!r} is not one of {', '.join(REQUESTABLE)}")
    return MODES[name]


def label_of(mode_name: str | None, outcome: str) -> str:
    """The commit label of a result: the mode's, or `reject` when nothing ran."""
    if outcome == "rejected" or mode_name is None:
        return REJECT_LABEL
    found = MODES.get(mode_name)
    return found.label if found else mode_name

