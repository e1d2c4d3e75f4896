"""Durable small-file writes: every state file the controller keeps is written through here."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

# Temp files start with this; whoever cleans a directory after a crash may remove them.
TEMP_PREFIX = ".ccci-tmp-"
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `path` whole: temp file, fsync, rename over, fsync the directory. A crash at any
    instant leaves the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, CREATE_FLAGS, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_path(path.parent)


def write_whole(path: Path, text: str) -> None:
    """A registry file a mutation writes: whole or not at all for a reader of the same clone
    (another ccci process reads it without the clone's lock)."""
    write_durably(path, text.encode())


def atomic_write_json(path: Path, doc: Any, *, mode: int = 0o644) -> None:
    """A JSON state file, written durably (sorted keys, so diffs and tests are stable)."""
    write_durably(path, (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode(), mode=mode)


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON state file, or `default` when it is missing or unreadable (a crash never leaves a
    torn one, but an operator's hand might)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default
