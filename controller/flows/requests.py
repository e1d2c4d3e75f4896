"""Filing run requests: from CLI arguments or a PR comment to a committed request file."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from controller.registry.documents import Request, parse_request
from controller.registry.store import Registry
from controller.util.errors import BadInput
from controller.util.names import check_recipe_name
from controller.util.timeutil import new_run_id
from controller.util.yamlio import dump_document

TRIGGERS = {"!testme": "cold", "!testme --quick": "quick", "!testme --upgrade": "upgrade"}
TRIGGER_WORD = "!testme"
HOW_TO_TRIGGER = "write exactly `!testme` (cold), `!testme --quick` (quick) or `!testme --upgrade` (upgrade)"


def trigger_mode(comment: str) -> str | None:
    """The mode a comment asks for: exactly `!testme` → cold, `!testme --quick` → quick,
    `!testme --upgrade` → upgrade (surrounding blank space aside); None for a comment that is no
    trigger at all. One that looks like a trigger but is not exactly one (`!testme please`, a
    full-width look-alike, one with invisible characters) is BadInput, so the commenter hears
    why nothing ran."""
    text = comment.strip()
    mode = TRIGGERS.get(text)
    if mode is not None:
        return mode
    visible = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    first_word = unicodedata.normalize("NFKC", visible).split(maxsplit=1)[0].casefold() if visible else ""
    if first_word.startswith(TRIGGER_WORD):
        raise BadInput(f"comment: {text[:80]!r} is not a ccci trigger; {HOW_TO_TRIGGER}")
    return None


def check_request(request: Request) -> None:
    """The same parser the controller uses, so what is filed is what it accepts."""
    try:
        parse_request(dump_document(request.to_document()).encode(), f"{request.run_id}.yaml")
    except BadInput as exc:
        raise BadInput(exc.message.replace(f"requests/{request.run_id}.yaml", "request")) from exc


def file_request(
    registry_path: Path,
    *,
    recipe: str,
    ref: str,
    mode: str,
    requested_by: str,
    trigger: str | None = None,
    pr: int | None = None,
) -> str:
    """Validate like the controller will, then commit `requests/<run id>.yaml`."""
    check_recipe_name(recipe, "--recipe")
    ref = ref.strip().lower()
    request = Request(run_id=new_run_id(recipe), recipe=recipe, ref=ref, mode=mode,
                      requested_by=requested_by, trigger=trigger, pr=pr)
    check_request(request)
    registry = Registry(registry_path)
    try:
        settings = registry.settings()
    except BadInput:
        settings = None  # a request can be filed while ccci.yaml is broken; serve will say why
    if settings is not None:
        registry.identity = registry.identity.of(settings)
        if recipe not in settings.recipes:
            raise BadInput(f"--recipe: {recipe!r} is not configured under 'recipes' in "
                           f"{registry.root}/ccci.yaml (known: {', '.join(sorted(settings.recipes)) or 'none'})")
    registry.file_request(request)
    return request.run_id
