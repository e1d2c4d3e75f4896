"""Canonical advancement: the one place that writes `canonicals/<recipe>.yaml`."""

from __future__ import annotations

import logging
from pathlib import Path

from controller.flows.context import Context
from controller.registry import documents, recipes
from controller.registry.documents import Canonical, Request
from controller.registry.results import RunResult, commit_message
from controller.registry.settings import RecipeSettings
from controller.registry.store import updated_text
from controller.registry.yamlio import dump_document
from controller.util import names
from controller.util.errors import CcciError
from controller.util.timeutil import now_iso

log = logging.getLogger(__name__)


def should_advance(current: Canonical | None, ref: str, descends: bool) -> bool:
    """Pure rule: first green seeds; later ones must descend from the current known-good."""
    if current is None:
        return True
    if current.known_good == ref:
        return False
    return descends


def _descends(ctx: Context, recipe: RecipeSettings, older: str, newer: str) -> bool:
    try:
        return recipes.is_ancestor(ctx.state, recipe, older, newer)
    except CcciError as exc:
        log.warning("cannot tell whether %s descends from %s: %s", newer[:12], older[:12], exc)
        return False


def finish_run(ctx: Context, request: Request, result: RunResult) -> bool:
    """Commit the final result; on a promotable green cold, advance the canonical in the
    same commit (so a crash never leaves one without the other). True when it advanced."""
    settings = ctx.settings
    recipe = settings.recipes.get(request.recipe)
    rel = names.result_rel(result.run)
    advanced = {"value": False}

    def write(root: Path) -> list[str] | None:
        touched = [rel]
        result.canonical["advanced"] = False
        if result.promote and result.outcome == "pass" and result.mode == "cold" and recipe:
            current_path = root / names.canonical_rel(request.recipe)
            current = (
                documents.parse_canonical(current_path.read_bytes(), names.canonical_rel(request.recipe))
                if current_path.is_file() else None
            )
            before = current.known_good if current else None
            descends = before is not None and _descends(ctx, recipe, before, request.ref)
            result.canonical["before"] = before
            if should_advance(current, request.ref, descends):
                app = f"warm-{request.recipe}"
                doc = {
                    "recipe": request.recipe,
                    "source": recipe.source,
                    "known_good": request.ref,
                    "domain": settings.domain(app),
                    "promoted_by_run": result.run,
                    "promoted_at": now_iso(),
                }
                current_path.parent.mkdir(parents=True, exist_ok=True)
                current_path.write_text(updated_text(root, names.canonical_rel(request.recipe), doc))
                touched.append(names.canonical_rel(request.recipe))
                result.canonical["after"] = request.ref
                result.canonical["advanced"] = True
            else:
                result.canonical["after"] = before
                result.canonical["reason"] = (
                    "not promoted: it is already the known-good" if before == request.ref else
                    f"not promoted: it does not descend from the known-good {before[:12] if before else '?'}")
        advanced["value"] = bool(result.canonical["advanced"])
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_document(result.to_document()))
        return touched

    def message() -> str:
        return commit_message(
            result, extra="canonical advanced" if advanced["value"] else "")

    ctx.registry.transact(write, message)
    if advanced["value"]:
        log.info("canonical of %s advanced to %s", request.recipe, request.ref[:12])
    return advanced["value"]
