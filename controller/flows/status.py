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
        try:
            snapshot = registry.snapshot_index(names.warm_app(name))
        except CcciError:
            snapshot = None
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
            "last_run": last.get("run") if last else None,
            "last_mode": last.get("mode") if last else None,
            "last_outcome": last.get("outcome") if last else None,
            "last_finished_at": last.get("finished_at") if last else None,
            **{f"last_{mode}": _brief(entry.get(f"last_{mode}")) for mode in ("cold", "quick", "rewarm")},
        })
    daemons = []
    for path in sorted(state.serve.glob("*.json")) if state.serve.is_dir() else []:
        doc = read_json(path)
        if isinstance(doc, dict) and "pid" in doc:
            daemons.append(doc)
    running = index.running
    limit = settings.limits.disk_min_free_gb
    disk = [{"path": path, "free_gib": round(free / 1024**3, 2), "low": free < limit * 1024**3}
            for path, free in sorted(prune.free_space(state).items())]
    return {
        "forge": outbox.health(state) if settings.forge.enabled else None,
        "registry": str(registry.root),
        "recipes": recipes,
        "running": running,
        "results": index.count,
        "history": list(reversed(indexed.get(recipe, {}).get("recent", []))) if recipe else None,
        "alerts": list_alerts(state),
        "daemons": daemons,
        "disk": disk,
        "disk_min_free_gb": limit,
    }
