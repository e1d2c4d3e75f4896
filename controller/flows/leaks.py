"""`ccci leaks`: live objects no run in flight owns. Warm data (volumes of warm apps) and the
live infra are expected to outlive runs and are not leaks."""

from __future__ import annotations

from dataclasses import dataclass

from controller.flows.warm_apps import read_warm_state
from controller.runtime.stack import LabelledObject, labelled_objects
from controller.util import inflight
from controller.util.locks import is_held_elsewhere
from controller.util.paths import StateDir


@dataclass(frozen=True)
class Leak:
    obj: LabelledObject
    reason: str

    def sentence(self) -> str:
        labels = self.obj.labels
        return (f"{self.obj.kind} {self.obj.name} (app {labels.get('ccci.app', '?')}, "
                f"mode {labels.get('ccci.mode', '?')}): {self.reason}")


def classify(obj: LabelledObject, live_runs: set[str], busy_warm_apps: set[str],
             owner: str | None = None) -> str | None:
    """Pure: why `obj` is a leak, or None when something legitimately owns it. Objects of
    another controller's state dir are that controller's to judge."""
    labels = obj.labels
    if owner and labels.get("ccci.owner") != owner:
        return None
    if labels.get("ccci.infra") == "true" or labels.get("ccci.mode") == "infra":
        return None
    mode = labels.get("ccci.mode")
    if mode == "cold":
        run = labels.get("ccci.run", "")
        return None if run in live_runs else f"its run {run or '?'} is not in flight"
    if mode == "warm":
        if obj.kind == "volume" or labels.get("ccci.generated") == "true":
            return None  # warm data (volumes, and the secrets they were made with): kept on purpose
        app = labels.get("ccci.app", "")
        return None if app in busy_warm_apps else "the warm app is deployed but no run holds its lock"
    return f"unknown ccci.mode {mode!r}"


def find_leaks(state: StateDir) -> list[Leak]:
    live_runs = inflight.in_flight_runs(state)
    objects = labelled_objects()
    warm_apps = {o.labels.get("ccci.app", "") for o in objects if o.labels.get("ccci.mode") == "warm"}
    # A warm app is legitimately deployed while a run holds it, or while it is kept hot.
    busy = {app for app in warm_apps if app and (is_held_elsewhere(state.app_lock(app))
                                                 or read_warm_state(state, app).get("hot") is not None)}
    leaks = []
    for obj in objects:
        reason = classify(obj, live_runs, busy, state.owner_id)
        if reason:
            leaks.append(Leak(obj, reason))
    return leaks
