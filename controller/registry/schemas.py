"""JSON Schemas of the registry's documents (ccci.yaml's is in settings_schema), and path-qualified errors."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from controller.util.errors import BadInput
from controller.util.names import FORGE_REPO

HEX40 = "^[0-9a-f]{40}$"
NAME = "^[a-z0-9][a-z0-9-]{0,62}$"
USER = "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$"
TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
RUN_ID = r"^\d{8}T\d{6}-[a-z0-9][a-z0-9-]{0,62}-[0-9a-f]{6}$"

# The modes of the registry format: what a request may ask for, and what a result
# may say ran. The controller's mode table (flows/modes.py) must agree; a test holds them equal.
REQUEST_MODES = ("cold", "quick", "upgrade")
RESULT_MODES = ("cold", "quick", "upgrade", "rewarm")

REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["recipe", "ref", "mode", "requested_by"],
    "properties": {
        "recipe": {"type": "string", "pattern": NAME},
        "ref": {"type": "string", "pattern": HEX40},
        "mode": {"enum": list(REQUEST_MODES)},
        "requested_by": {"type": "string", "pattern": USER},
        "trigger": {"type": ["string", "null"], "maxLength": 1000},
        "pr": {"type": ["integer", "null"], "minimum": 0},
        # Set by the controller when it re-files a run whose host died (serve.refile_abandoned):
        # a re-filed run is never re-filed again.
        "refiled_from": {"type": "string", "pattern": RUN_ID},
        # A cold request the controller filed after a failed quick run: that run's id.
        "follow_up_of": {"type": "string", "pattern": RUN_ID},
        "forge": {
            "type": "object",
            "additionalProperties": False,
            "required": ["repo", "pr", "comment_id"],
            "properties": {
                "repo": {"type": "string", "pattern": FORGE_REPO},
                "pr": {"type": "integer", "minimum": 1},
                "comment_id": {"type": "integer", "minimum": 1},
                # The authority rule the forge confirmed at comment time (org:…, team:…, collaborator).
                "allowed_by": {"type": "string", "maxLength": 300},
            },
        },
    },
}

CANONICAL: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["recipe", "known_good", "promoted_by_run", "promoted_at"],
    "properties": {
        "recipe": {"type": "string", "pattern": NAME},
        "source": {"type": "string"},
        "known_good": {"type": "string", "pattern": HEX40},
        "domain": {"type": "string"},
        "promoted_by_run": {"type": "string", "pattern": RUN_ID},
        "promoted_at": {"type": "string", "pattern": TIMESTAMP},
    },
}

SNAPSHOT_INDEX: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["app", "commit", "path", "volumes", "manifest_sha256", "taken_at"],
    "properties": {
        "app": {"type": "string", "pattern": NAME},
        "commit": {"type": "string", "pattern": HEX40},
        "path": {"type": "string", "pattern": "^/"},
        "volumes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["files", "bytes"],
                "properties": {
                    "files": {"type": "integer", "minimum": 0},
                    "bytes": {"type": "integer", "minimum": 0},
                },
            },
        },
        "manifest_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "taken_at": {"type": "string", "pattern": TIMESTAMP},
        "taken_by_run": {"type": ["string", "null"]},
    },
}

RESULT: dict[str, Any] = {
    "type": "object",
    "required": ["run", "outcome", "mode"],
    "properties": {
        "run": {"type": "string"},
        "recipe": {"type": ["string", "null"]},
        "ref": {"type": ["string", "null"]},
        "mode": {"enum": [*RESULT_MODES, "reject", None]},
        "requested_mode": {"type": ["string", "null"]},
        "outcome": {"enum": ["running", "pass", "fail", "error", "rejected", "aborted"]},
        "gating": {"type": "boolean"},
        "host": {"type": ["string", "null"]},
        "deadline": {"type": ["string", "null"], "pattern": TIMESTAMP},
    },
}


def _where(error: ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: ValidationError) -> tuple[str, str]:
    """(field path, sentence) for one schema error, worded for people."""
    where = _where(error)
    validator = error.validator
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        field = missing if where == "(top level)" else f"{where}.{missing}"
        return field, "is missing (required)"
    if validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        keys = ", ".join(repr(k) for k in extra)
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return where, f"unknown key {keys} (allowed: {allowed})"
    if validator == "enum":
        options = ", ".join("null" if o is None else str(o) for o in error.validator_value)
        return where, f"{error.instance!r} is not one of {options}"
    if validator == "type":
        wanted = error.validator_value
        wanted_text = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return where, f"{error.instance!r} is a {type(error.instance).__name__}, expected {wanted_text}"
    if validator == "pattern":
        return where, f"{error.instance!r} does not match the required form {error.validator_value}"
    if validator == "dependentRequired":
        missing = re.match(r"'(.+)' is a dependency of '(.+)'", error.message)
        if missing:
            return where, f"{missing.group(1)!r} is required when {missing.group(2)!r} is set"
        return where, error.message
    if validator == "propertyNames":
        return where, f"{error.instance!r} is not an allowed name ({error.message})"
    return where, error.message


def validate(document: Any, schema: dict[str, Any], where: str) -> None:
    """Raise BadInput naming the file and the field of the most relevant error."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(document))
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors)
    assert best is not None
    field, sentence = _describe(best)
    raise BadInput(f"{where}: at '{field}': {sentence}")
