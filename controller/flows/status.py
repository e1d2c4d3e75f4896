"""What `ccci status` reports: recipes, known-good, snapshots, last results, alerts, daemons, disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.flows import prune
from controller.flows.forge import outbox
from controller.registry import recipes as recipe_sources
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


def collect_status(registry_path: Path, state_dir: str | Path | None) -> dict[str, Any]:
    registry = Registry(registry_path)
    state = StateDir.from_env(state_dir)
    settings = registry.settings()
    results = registry.all_results()
    latest: dict[str, dict[str, Any]] = {}
    latest_by_mode: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in sorted(results, key=lambda d: str(d.get("started_at") or "")):
        recipe = doc.get("recipe")
        if isinstance(recipe, str):
            latest[recipe] = doc
            if doc.get("mode") in ("cold", "quick", "rewarm"):
                latest_by_mode[(recipe, str(doc["mode"]))] = doc
    recipes = []
    for name in sorted(settings.recipes):
        canonical_error: str | None = None
        try:
            canonical = registry.canonical(name)
        except CcciError as exc:
            canonical, canonical_error = None, exc.message
        try:
            index = registry.snapshot_index(names.warm_app(name))
        except CcciError:
            index = None
        last = latest.get(name)
        recipes.append({
            "recipe": name,
            "source_problem": recipe_sources.source_problem(settings.recipes[name]),
            "known_good": canonical.known_good if canonical else None,
            "promoted_at": canonical.promoted_at if canonical else None,
            "canonical_error": canonical_error,
            "snapshot_commit": index.commit if index else None,
            "snapshot_taken_at": index.taken_at if index else None,
            "last_run": last.get("run") if last else None,
            "last_mode": last.get("mode") if last else None,
            "last_outcome": last.get("outcome") if last else None,
            "last_finished_at": last.get("finished_at") if last else None,
            **{f"last_{mode}": _brief(latest_by_mode.get((name, mode))) for mode in ("cold", "quick", "rewarm")},
        })
    daemons = []
    for path in sorted(state.serve.glob("*.json")) if state.serve.is_dir() else []:
        doc = read_json(path)
        if isinstance(doc, dict) and "pid" in doc:
            daemons.append(doc)
    running = [d.get("run") for d in results if d.get("outcome") == "running"]
    limit = settings.limits.disk_min_free_gb
    disk = [{"path": path, "free_gib": round(free / 1024**3, 2), "low": free < limit * 1024**3}
            for path, free in sorted(prune.free_space(state).items())]
    return {
        "forge": outbox.health(state) if settings.forge.enabled else None,
        "registry": str(registry.root),
        "recipes": recipes,
        "running": running,
        "results": len(results),
        "alerts": list_alerts(state),
        "daemons": daemons,
        "disk": disk,
        "disk_min_free_gb": limit,
    }
