"""The live index: each live volume file's digest as of the last take or restore, keyed by its stat."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.snapshots import fsio
from controller.snapshots.layout import MANIFEST_CAP
from controller.snapshots.manifest import SHA256_RE, ManifestEntry, Observed

log = logging.getLogger(__name__)

INDEX_FILE = "live-index.json"
INDEX_FORMAT = 1
# Kernel timestamps come from a coarse clock (a tick of 1-10 ms): a file changed in the tick
# its row was scanned in could keep its ctime. Rows that close to their scan are not trusted.
RACY_NS = 100_000_000

# [st_dev, st_ino, size, mtime_ns, ctime_ns, sha256] of a live file, as stored: rows are
# not checked one by one when read (20 000 of them would cost more than the restore they
# speed up); a malformed row simply never matches a file.
Row = list[Any]


def stamp(seen: Observed) -> list[int]:
    return [seen.inode[0], seen.inode[1], seen.size, seen.mtime_ns, seen.ctime_ns]


@dataclass(frozen=True)
class VolumeIndex:
    """One volume's rows, from a scan that started at `scanned_ns`."""

    scanned_ns: int = 0
    rows: dict[str, Row] = field(default_factory=dict)

    def vouched(self, path: str, have: Observed | None) -> str | None:
        """The digest this index vouches for, or None when the file is not known unchanged.

        A file vouches for its recorded digest only while its device, inode, size, mtime
        and ctime are all unchanged. No process can set a ctime (a write, chmod, chown,
        utime or rename moves it to the current time), so content can change unseen only
        by stepping the system clock back or by writing below the filesystem. A file whose
        ctime lies within RACY_NS before the scan could change again in the same clock tick
        without its ctime moving: it is never trusted.
        """
        if have is None or have.type != "f":
            return None
        row = self.rows.get(path)
        if (
            type(row) is not list
            or len(row) != 6
            or have.ctime_ns >= self.scanned_ns - RACY_NS
            or row[4] != have.ctime_ns  # the field most likely to differ first
            or row[:4] != [have.inode[0], have.inode[1], have.size, have.mtime_ns]
        ):
            return None
        sha = row[5]
        return sha if isinstance(sha, str) and SHA256_RE.match(sha) else None


EMPTY = VolumeIndex()


def read_index(where: Path) -> dict[str, VolumeIndex]:
    """The app's live index per volume; empty when missing or unreadable (it is only a cache)."""
    try:
        doc: Any = json.loads(fsio.read_capped(where / INDEX_FILE, MANIFEST_CAP))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); every file will be hashed", where / INDEX_FILE, exc)
        return {}
    try:
        if doc["format"] != INDEX_FORMAT:
            raise ValueError(f"format {doc['format']!r}")
        volumes: dict[str, VolumeIndex] = {}
        for volume, part in doc["volumes"].items():
            if type(part["scanned_ns"]) is not int:
                raise ValueError("scanned_ns is not an integer")
            rows = part["rows"]
            if not isinstance(rows, dict):
                raise ValueError("rows is not an object")
            volumes[volume] = VolumeIndex(part["scanned_ns"], rows)
        return volumes
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("%s: malformed (%s); every file will be hashed", where / INDEX_FILE, exc)
        return {}


def volume_index(
    scanned_ns: int, entries: Iterable[ManifestEntry], seen: Mapping[str, Observed]
) -> VolumeIndex:
    """One volume's index: each file's stamp (from a scan begun at `scanned_ns`) and its digest."""
    rows: dict[str, Row] = {}
    for entry in entries:
        have = seen.get(entry.path)
        if entry.type == "f" and entry.sha256 is not None and have is not None and have.type == "f":
            rows[entry.path] = [*stamp(have), entry.sha256]
    return VolumeIndex(scanned_ns, rows)


def write_index(where: Path, volumes: Mapping[str, VolumeIndex]) -> None:
    """Replace the app's live index by renaming a temp file over it.

    No fsync: every row is a fact that stays true (a file with this stamp held this
    digest), so an index that is old, empty or torn after a power loss is at worst
    useless (then files are hashed), never wrong; two fsyncs would cost a restore more
    than reading the index saves on a busy disk.
    """
    doc = {
        "format": INDEX_FORMAT,
        "volumes": {name: {"scanned_ns": part.scanned_ns, "rows": part.rows}
                    for name, part in volumes.items()},
    }
    temp = where / fsio.temp_name()
    try:
        temp.write_bytes(json.dumps(doc, separators=(",", ":")).encode())
        os.replace(temp, where / INDEX_FILE)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
