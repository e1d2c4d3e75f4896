"""Whether an app's live volumes equal its last-known-good (volumes-state.json)."""

from __future__ import annotations

import json
from pathlib import Path

from controller.snapshots import fsio
from controller.snapshots.layout import META_CAP, STATE_FILE, app_dir, locked, read_info
from controller.snapshots.manifest import SHA256_RE
from controller.util import files
from controller.util.errors import BadInput
from controller.util.timeutil import now_iso


def write_state(where: Path, *, clean: bool, manifest_sha256: str | None) -> None:
    doc = {"clean": clean, "manifest_sha256": manifest_sha256, "updated_at": now_iso()}
    files.write_durably(where / STATE_FILE, (json.dumps(doc, sort_keys=True) + "\n").encode())


def mark_volumes_dirty(store_root: Path, app: str) -> None:
    """The live volumes may differ from the last-known-good (an upgrade or restore is running)."""
    with locked(store_root, app) as where:
        write_state(where, clean=False, manifest_sha256=None)


def mark_volumes_clean(store_root: Path, app: str, manifest_sha256: str) -> None:
    """The live volumes equal the snapshot with this digest."""
    if not SHA256_RE.match(manifest_sha256):
        raise BadInput(f"{manifest_sha256!r} is not a sha256 digest")
    with locked(store_root, app) as where:
        write_state(where, clean=True, manifest_sha256=manifest_sha256)


def volumes_clean(store_root: Path, app: str) -> bool:
    """True only when marked clean against the current last-known-good's digest."""
    where = app_dir(store_root, app)
    try:
        doc = json.loads(fsio.read_capped(where / STATE_FILE, META_CAP))
    except (FileNotFoundError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("clean") is not True:
        return False
    found = read_info(where, app)
    return found is not None and doc.get("manifest_sha256") == found[0].manifest_sha256
