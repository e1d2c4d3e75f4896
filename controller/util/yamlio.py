"""YAML in and out: safe, size-capped loading of untrusted text; round-trip writes."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent

from controller.util.errors import BadInput

DEFAULT_MAX_BYTES = 64 * 1024


def _normalise(value: Any) -> Any:
    """Plain JSON-like values: timestamps become ISO strings, keys stay as loaded."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _problem_line(exc: YAMLError) -> str:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
        return str(problem)
    return str(exc).splitlines()[0] if str(exc) else "invalid YAML"


def load_untrusted(raw: bytes, where: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Parse YAML read from git or any outside source.

    Size-capped before parsing; anchors and aliases are refused (an alias bomb expands
    only when walked, so refusing them is the one cheap, complete defence); duplicate
    keys are errors; only plain YAML types are constructed.
    """
    if len(raw) > max_bytes:
        raise BadInput(f"{where}: the file is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{where}: the file is not UTF-8 text (byte {exc.start})") from exc
    if "\x00" in text:
        raise BadInput(f"{where}: the file contains a NUL byte")
    loader = YAML(typ="safe", pure=True)
    try:
        for event in loader.parse(io.StringIO(text)):
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
                raise BadInput(f"{where}: at '(top level)': YAML anchors and aliases are not allowed")
        documents = list(YAML(typ="safe", pure=True).load_all(text))
    except BadInput:
        raise
    except YAMLError as exc:
        raise BadInput(f"{where}: malformed YAML: {_problem_line(exc)}") from exc
    except (ValueError, TypeError, RecursionError) as exc:
        raise BadInput(f"{where}: malformed YAML: {exc}") from exc
    if not documents or (len(documents) == 1 and documents[0] is None):
        raise BadInput(f"{where}: at '(top level)': the file is empty, expected a mapping")
    if len(documents) != 1:
        raise BadInput(f"{where}: at '(top level)': expected exactly one YAML document, "
                       f"found {len(documents)}")
    return _normalise(documents[0])


def read_capped(path: Path, where: str, max_bytes: int) -> bytes:
    """A file's bytes, reading at most one byte past the cap (a 10 MB file costs 64 KiB)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise BadInput(f"{where}: cannot read the file: {exc.strerror}") from exc
    if len(raw) > max_bytes:
        size = path.stat().st_size
        raise BadInput(f"{where}: the file is {size} bytes, over the {max_bytes}-byte limit")
    return raw


def read_untrusted(path: Path, where: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """`load_untrusted` on a file."""
    return load_untrusted(read_capped(path, where, max_bytes), where, max_bytes=max_bytes)


def _round_trip() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def dump_document(data: dict[str, Any]) -> str:
    """A new document, in the round-trip style reviewers see in diffs."""
    out = io.StringIO()
    _round_trip().dump(data, out)
    return out.getvalue()


def update_document(text: str, updates: dict[str, Any]) -> str:
    """Set top-level keys of an existing document; every untouched line stays byte-identical."""
    yaml = _round_trip()
    data = yaml.load(text)
    if data is None:
        data = {}
    for key, value in updates.items():
        if key in data and data[key] == value:
            continue
        data[key] = value
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()
