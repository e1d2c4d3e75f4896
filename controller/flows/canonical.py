"""Canonical advancement: the rule, and the one writer of `canonicals/<recipe>.yaml`."""

from __future__ import annotations

import logging
from pathlib import Path

from controller.flows.context import Context, Run
from controller.registry import documents, recipes
from controller.registry.documents import Canonical
from controller.registry.settings import RecipeSettings
from controller.registry.store import updated_text
from controller.util import names
from controller.util.errors import CcciError
from controller.util.files import write_whole
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


def advance_canonical(ctx: Context, root: Path, run: Run) -> str | None:
    """Inside the verdict's commit: move the canonical of a promotable green cold to the tested
    commit when the rule allows. Returns the path written, or None; records why in the result."""
    result, request = run.result, run.request
    result.canonical["advanced"] = False
    recipe = ctx.settings.recipes.get(request.recipe)
    if not (result.promote and result.outcome == "pass" and result.mode == "cold" and recipe):
        return None
    rel = names.canonical_rel(request.recipe)
    path = root / rel
    current = documents.parse_canonical(path.read_bytes(), rel) if path.is_file() else None
    before = current.known_good if current else None
    descends = before is not None and _descends(ctx, recipe, before, request.ref)
    result.canonical["before"] = before
    if not should_advance(current, request.ref, descends):
        result.canonical["after"] = before
        result.canonical["reason"] = (
            "not promoted: it is already the known-good" if before == request.ref else
            f"not promoted: it does not descend from the known-good {before[:12] if before else '?'}")
        return None
    doc = {
        "recipe": request.recipe,
        "source": recipe.source,
        "known_good": request.ref,
        "domain": ctx.settings.domain(names.warm_app(request.recipe)),
        "promoted_by_run": result.run,
        "promoted_at": now_iso(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, updated_text(root, rel, doc))
    result.canonical["after"] = request.ref
    result.canonical["advanced"] = True
    return rel
