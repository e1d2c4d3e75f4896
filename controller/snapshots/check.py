"""Comparing a directory tree on disk with a manifest: metadata always, content when asked."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from controller.snapshots import fsio
from controller.snapshots.copy import hash_entries
from controller.snapshots.manifest import ManifestEntry, Observed, metadata_differences, sort_key

# Decides, per file whose metadata already matches, whether its content is re-hashed.
HashPolicy = Callable[[ManifestEntry], bool]


def hash_all(entry: ManifestEntry) -> bool:
    return True


def hash_none(entry: ManifestEntry) -> bool:
    return False


def tree_differences(
    want: list[ManifestEntry], seen: dict[str, Observed], label: str = ""
) -> list[str]:
    """Pure: metadata and structure (missing, extra, hard links) of a scanned tree vs a manifest."""
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


def compare_tree(
    root: Path,
    want: list[ManifestEntry],
    *,
    should_hash: HashPolicy = hash_all,
    label: str = "",
    drop_cache: bool = False,
) -> list[str]:
    """Every difference between the tree at `root` and `want`; empty means equal."""
    root_fd = fsio.open_root(root)
    try:
        seen = fsio.scan(root_fd)
        problems = tree_differences(want, seen, label)
        if problems:
            return problems
        files = [
            (entry.path, seen[entry.path].inode)
            for entry in want
            if entry.type == "f" and should_hash(entry)
        ]
        hashes = hash_entries(root_fd, files, drop_cache=drop_cache)
    finally:
        os.close(root_fd)
    wanted = {entry.path: entry for entry in want}
    return [
        f"{label}{path}: content differs (sha256 {sha[:12]}… instead of {wanted[path].sha256})"
        for path, sha in sorted(hashes.items(), key=lambda item: sort_key(item[0]))
        if sha != wanted[path].sha256
    ]
