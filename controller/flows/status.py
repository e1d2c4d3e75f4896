"""What `ccci status` reports: recipes, known-good, snapshots, last results, alerts, daemons, disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.flows import prune
from controller.flows.forge import outbox
from controller.registry import recipes as recipe_sources
from controller.registry.index import ResultsIndex
from controller.registry.store import Registry
from controller.util import names
from controller.util.alerts import list_alerts
from controller.util.errors import CcciError
from controller.util.files import read_json
from controller.util.paths import StateDir


def _brief(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {"run": doc.get("run"), "ref": doc.get("ref"), "outcome": doc.get("outcome"),
            "finished_at": doc.get("finished_at")}


LEGACY = "(single-host entry)"  # snapshots-index/<app>.yaml, not yet moved under its host's name


def fleet_hosts(registry: Registry, index: ResultsIndex) -> list[dict[str, Any]]:
    """Each host of the fleet: when its results last said anything (from the results index, so
    the cost follows what changed), its runs in flight, the warm apps it holds snapshots of."""
    hosts: dict[str, dict[str, Any]] = {}

    def host(name: str) -> dict[str, Any]:
        return hosts.setdefault(name, {"host": name, "last_seen": None, "running": [], "warm": []})

    for name, entry in index.hosts.items():
        host(name)["last_seen"] = entry.get("last_seen") or None
    for run, entry in sorted(index.in_flight.items()):
        host(str(entry.get("host") or "(unknown)"))["running"].append(run)
    for name in registry.index_hosts():
        folder = registry.root / names.SNAPSHOT_INDEX_DIR / name
        host(name)["warm"] = sorted(p.stem for p in folder.glob("*.yaml") if names.APP_RE.match(p.stem))
    return [hosts[name] for name in sorted(hosts)]


def results_index(registry: Registry, state: StateDir) -> ResultsIndex:
    return ResultsIndex(registry, state.results_index(registry.root)).refresh()


def collect_status(registry_path: Path, state_dir: str | Path | None, *, recipe: str | None = None) -> dict[str, Any]:
    """What `ccci status` shows; with `recipe`, that recipe's recent runs too. Its cost follows
    the recipes and what changed since the last look, not the history (the results index)."""
    registry = Registry(registry_path)
    state = StateDir.from_env(state_dir)
    settings = registry.settings()
    if recipe is not None:
        settings.recipe(recipe)  # BadInput naming it when ccci.yaml does not know it
    index = results_index(registry, state)
    indexed = index.recipes
    recipes = []
    for name in sorted(settings.recipes):
        canonical_error: str | None = None
        try:
            canonical = registry.canonical(name)
        except CcciError as exc:
            canonical, canonical_error = None, exc.message
        app = names.warm_app(name)
        held = dict(registry.snapshot_indexes(app))
        try:
            legacy = registry.legacy_snapshot_index(app)
        except CcciError:
            legacy = None
        if legacy is not None:
            held[LEGACY] = legacy
        known_good = canonical.known_good if canonical else None
        snapshot = next((e for e in held.values() if e.commit == known_good), None) or next(iter(held.values()), None)
        entry = indexed.get(name, {})
        last = entry.get("last")
        recipes.append({
            "recipe": name,
            "source_problem": recipe_sources.source_problem(settings.recipes[name]),
            "known_good": canonical.known_good if canonical else None,
            "promoted_at": canonical.promoted_at if canonical else None,
            "canonical_error": canonical_error,
            "snapshot_commit": snapshot.commit if snapshot else None,
            "snapshot_taken_at": snapshot.taken_at if snapshot else None,
            # Whose disks hold a last-known-good of it, and of which commit.
            "snapshots": {host: {"commit": e.commit, "taken_at": e.taken_at, "current": e.commit == known_good}
                          for host, e in sorted(held.items())},
            "last_run": last.get("run") if last else None,
            "last_mode": last.get("mode") if last else None,
            "last_outcome": last.get("outcome") if last else None,
            "last_finished_at": last.get("finished_at") if last else None,
            **{f"last_{mode}": _brief(entry.get(f"last_{mode}")) for mode in ("cold", "quick", "upgrade", "rewarm")},
        })
    daemons = []
    for path in sorted(state.serve.glob("*.json")) if state.serve.is_dir() else []:
        doc = read_json(path)
        if isinstance(doc, dict) and "pid" in doc:
            daemons.append(doc)
    running = index.running
    hosts = fleet_hosts(registry, index)
    limit = settings.limits.disk_min_free_gb
    disk = [{"path": path, "free_gib": round(free / 1024**3, 2), "low": free < limit * 1024**3}
            for path, free in sorted(prune.free_space(state).items())]
    return {
        "forge": outbox.health(state) if settings.forge.enabled else None,
        "registry": str(registry.root),
        "recipes": recipes,
        "running": running,
        "hosts": hosts,
        "results": index.count,
        "history": list(reversed(indexed.get(recipe, {}).get("recent", []))) if recipe else None,
        "alerts": list_alerts(state),
        "daemons": daemons,
        "disk": disk,
        "disk_min_free_gb": limit,
    }
