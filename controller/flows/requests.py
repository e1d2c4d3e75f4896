"""Filing run requests: from CLI arguments or a PR comment to a committed request file."""

from __future__ import annotations

import contextlib
from pathlib import Path

from controller.registry.documents import Request, parse_request
from controller.registry.store import Registry
from controller.util.errors import BadInput
from controller.util.names import check_recipe_name
from controller.util.timeutil import new_run_id
from controller.util.yamlio import dump_document

COMMENTS = {"!testme": "cold", "!testme --quick": "quick"}


def mode_from_comment(comment: str) -> str:
    """Exactly `!testme` → cold, `!testme --quick` → quick (surrounding blank space aside)."""
    text = comment.strip()
    mode = COMMENTS.get(text)
    if mode is None:
        raise BadInput(
            f"comment: {text[:80]!r} is not a ccci trigger; write exactly `!testme` (cold) "
            "or `!testme --quick` (quick)"
        )
    return mode


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
    # The same parser the controller uses, so what we file is what it accepts.
    try:
        parse_request(dump_document(request.to_document()).encode(), f"{request.run_id}.yaml")
    except BadInput as exc:
        raise BadInput(exc.message.replace(f"requests/{request.run_id}.yaml", "request")) from exc
    registry = Registry(registry_path)
    # A request can be filed even while ccci.yaml is broken; serve will say why.
    with contextlib.suppress(BadInput):
        registry.identity = registry.identity.of(registry.settings())
    registry.file_request(request)
    return request.run_id
