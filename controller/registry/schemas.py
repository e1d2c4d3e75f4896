"""JSON Schemas for every document kind the controller reads, and path-qualified errors."""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from controller.util.errors import BadInput

HEX40 = "^[0-9a-f]{40}$"
NAME = "^[a-z0-9][a-z0-9-]{0,62}$"
USER = "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$"
TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
RUN_ID = r"^\d{8}T\d{6}-[a-z0-9][a-z0-9-]{0,62}-[0-9a-f]{6}$"

# The modes of the registry format (DESIGN §3): what a request may ask for, and what a result
# may say ran. The controller's mode table (flows/modes.py) must agree; a test holds them equal.
REQUEST_MODES = ("cold", "quick")
RESULT_MODES = ("cold", "quick", "rewarm")

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
    },
}

RECIPE_SETTINGS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source"],
    "properties": {
        "source": {"type": "string", "minLength": 1, "maxLength": 1000},
        "track": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$"},
        "sso": {"enum": ["keycloak", None]},
        "timeout_s": {"type": "integer", "minimum": 10, "maximum": 86400},
        "stability_s": {"type": "number", "minimum": 0, "maximum": 3600},
        "http": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "service": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "path": {"type": "string", "pattern": "^/"},
                "enabled": {"type": "boolean"},
            },
        },
        "assert": {"type": "string", "minLength": 1, "maxLength": 300},
        "assert_timeout_s": {"type": "integer", "minimum": 1, "maximum": 86400},
        "env": {
            "type": "object",
            "additionalProperties": {"type": ["string", "integer", "number", "boolean"]},
        },
        "keep_failed": {"type": "boolean"},
    },
}

SETTINGS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["base_domain"],
    "properties": {
        "base_domain": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$",
        },
        "identity": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "email": {"type": "string", "minLength": 3, "maxLength": 200},
            },
        },
        "recipes": {
            "type": ["object", "null"],
            "propertyNames": {"pattern": NAME},
            "additionalProperties": RECIPE_SETTINGS,
        },
        "authority": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "cold": {"type": "array", "items": {"type": "string"}},
                "quick": {"type": "array", "items": {"type": "string"}},
            },
        },
        "quick": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"no_canonical": {"enum": ["fallback-cold", "reject"]}},
        },
        "sweep": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "at": {"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$"},
                "timezone": {"type": "string"},
                "max_tests": {"type": "integer", "minimum": 0, "maximum": 1000},
                "order": {"enum": ["stalest-first", "alphabetical"]},
            },
        },
        "warm": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "keycloak": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "mode": {"enum": ["external", "managed", "off"]},
                        "url": {"type": "string", "pattern": "^https?://"},
                        "admin_user": {"type": "string", "minLength": 1},
                        "admin_secret_file": {"type": "string", "minLength": 1},
                        "admin_secret_env": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"},
                        "recipe": {"type": "string", "pattern": NAME},
                        "app": {"type": "string", "pattern": NAME},
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "fallback": {"enum": ["co-deploy", "fail"]},
                    },
                }
            },
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_parallel_cold": {"type": "integer", "minimum": 1, "maximum": 64},
                "disk_min_free_gb": {"type": "number", "minimum": 0},
                "prune_images": {"enum": ["dangling", "unused", "none"]},
                "prune_keep_images": {"type": "array", "items": {"type": "string", "minLength": 1,
                                                                 "maxLength": 256}},
                "prune_interval_s": {"type": "number", "minimum": 60},
            },
        },
        "serve": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "poll_interval_s": {"type": "number", "minimum": 0.1, "maximum": 3600},
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
