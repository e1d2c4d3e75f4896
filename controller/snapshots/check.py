"""Comparing a directory tree on disk with a manifest: metadata always, content when asked."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.snapshots import fsio
from controller.snapshots.copy import hash_entries
from controller.snapshots.manifest import ManifestEntry, Observed, metadata_differences, sort_key

# Decides, per file whose metadata already matches (and what lstat saw of it), whether
# its content is re-hashed.
HashPolicy = Callable[[ManifestEntry, Observed], bool]


def hash_all(entry: ManifestEntry, have: Observed) -> bool:
    return True


def tree_differences(
    want: list[ManifestEntry], seen: dict[str, Observed], label: str = ""
) -> list[str]:
    """Pure: metadata and structure (missing, extra, hard links) of a scanned tree vs a manifest."""
    if _plainly_equal(want, seen):
        return []
    problems: list[str] = []
    wanted = {entry.path: entry for entry in want}
    for entry in sorted(want, key=lambda e: sort_key(e.path)):
        have = seen.get(entry.path)
        if have is None:
            problems.append(f"{label}{entry.path}: missing")
            continue
        problems.extend(f"{label}{entry.path}: {d}" for d in metadata_differences(entry, have))
    for path in sorted(set(seen) - set(wanted), key=sort_key):
        problems.append(f"{label}{path}: not in the snapshot")
    problems.extend(_hardlink_differences(wanted, seen, label))
    return problems


def _plainly_equal(want: list[ManifestEntry], seen: dict[str, Observed]) -> bool:
    """The common case in one pass, without sorting: every entry there with its metadata,
    nothing else there, no hard link wanted and no inode shared. False sends the caller to
    the full comparison, which names each difference in path order."""
    if len(seen) != len(want) or len({entry.path for entry in want}) != len(want):
        return False
    files: set[tuple[int, int]] = set()
    for entry in want:
        have = seen.get(entry.path)
        if have is None or entry.hardlink is not None or metadata_differences(entry, have):
            return False
        if entry.type == "f":
            files.add(have.inode)
    return len(files) == sum(1 for entry in want if entry.type == "f")


def _hardlink_differences(
    wanted: dict[str, ManifestEntry], seen: dict[str, Observed], label: str
) -> list[str]:
    problems: list[str] = []
    group_of_inode: dict[tuple[int, int], str] = {}
    for path in sorted(wanted, key=sort_key):
        entry, have = wanted[path], seen.get(path)
        if entry.type != "f" or have is None or have.type != "f":
            continue
        group = entry.hardlink or path
        other = group_of_inode.setdefault(have.inode, group)
        if other != group:
            problems.append(f"{label}{path}: shares an inode with {other}; the snapshot has them apart")
        if entry.hardlink not in (None, path):
            leader = seen.get(entry.hardlink)
            if leader is None or leader.inode != have.inode:
                problems.append(f"{label}{path}: not hard-linked to {entry.hardlink}")
    return problems


@dataclass(frozen=True)
class TreeCheck:
    problems: list[str]  # empty: the tree equals the manifest (as far as it was hashed)
    seen: dict[str, Observed]  # the scan the check is based on
    scanned_ns: int  # the clock just before that scan
    hashes: dict[str, str]  # path -> sha256 of every file hashed


def check_tree(
    root: Path,
    want: list[ManifestEntry],
    *,
    should_hash: HashPolicy = hash_all,
    label: str = "",
    drop_cache: bool = False,
    before: Mapping[str, Observed] | None = None,
    restat: Callable[[str, Observed], bool] = lambda path, earlier: True,
) -> TreeCheck:
    """Scan `root`, compare it with `want`, hash the files `should_hash` picks.

    An entry without a digest (sha256 None) is hashed when picked but never compared:
    the caller learns its digest from `hashes`. Given `before` (an earlier scan of the
    same tree), entries `restat` declines keep their earlier lstat (fsio.rescan).
    """
    scanned_ns = time.time_ns()
    root_fd = fsio.open_root(root)
    try:
        seen = fsio.scan(root_fd) if before is None else fsio.rescan(root_fd, before, restat)
        problems = tree_differences(want, seen, label)
        if problems:
            return TreeCheck(problems, seen, scanned_ns, {})
        files = [
            (entry.path, seen[entry.path].inode)
            for entry in want
            if entry.type == "f" and should_hash(entry, seen[entry.path])
        ]
        hashes = hash_entries(root_fd, files, drop_cache=drop_cache)
    finally:
        os.close(root_fd)
    wanted = {entry.path: entry for entry in want}
    problems = [
        f"{label}{path}: content differs (sha256 {sha[:12]}… instead of {wanted[path].sha256})"
        for path, sha in sorted(hashes.items(), key=lambda item: sort_key(item[0]))
        if wanted[path].sha256 is not None and sha != wanted[path].sha256
    ]
    return TreeCheck(problems, seen, scanned_ns, hashes)


def compare_tree(
    root: Path,
    want: list[ManifestEntry],
    *,
    should_hash: HashPolicy = hash_all,
    label: str = "",
    drop_cache: bool = False,
) -> list[str]:
    """Every difference between the tree at `root` and `want`; empty means equal."""
    return check_tree(root, want, should_hash=should_hash, label=label,
                      drop_cache=drop_cache).problems
