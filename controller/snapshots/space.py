"""The disk guard: a take must fit beside the old snapshot, or it does not start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from controller.snapshots import fsio
from controller.util.errors import CheckFailed

BLOCK = 4096


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding `path` (tests replace this to fake a full disk)."""
    return shutil.disk_usage(path).free


def disk_usage(root: Path) -> int:
    """Allocated bytes below `root`, each hard-linked inode once (what a raw copy needs)."""
    total = 0
    counted: set[tuple[int, int]] = set()
    root_fd = fsio.open_root(root)
    try:
        for seen in fsio.scan(root_fd).values():
            if seen.type == "f" and seen.nlink > 1:
                if seen.inode in counted:
                    continue
                counted.add(seen.inode)
            if seen.type == "f":
                # Rounded up to whole blocks, but no more than a sparse source allocates.
                total += min(-(-seen.size // BLOCK) * BLOCK, max(seen.blocks, BLOCK))
            elif seen.type == "d":
                total += BLOCK
    finally:
        os.close(root_fd)
    return total


def filesystem_bound(path: Path) -> int | None:
    """An upper bound of disk_usage() of any tree on the filesystem holding `path`, from
    one statfs: its used blocks plus a block per inode in use (disk_usage counts at most a
    file's allocation or one block, a directory one block, a hard-linked inode once).
    None where the filesystem does not count its inodes (btrfs reports 0)."""
    st = os.statvfs(path)
    if st.f_files == 0:
        return None
    used_bytes = (st.f_blocks - st.f_bfree) * st.f_frsize
    return used_bytes + (st.f_files - st.f_ffree) * BLOCK


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    raise AssertionError("unreachable")


def check_free_space(where: Path, app: str, sources: dict[str, Path], min_free_bytes: int) -> None:
    free = _free_bytes(where)
    # Where everything on the volumes' filesystems would fit, no tree is scanned: that
    # scan costs a cold lstat of every entry, as long as a replacing take's own work.
    bounds = [filesystem_bound(src) for src in {os.stat(s).st_dev: s for s in sources.values()}.values()]
    if all(b is not None for b in bounds) and sum(b or 0 for b in bounds) + min_free_bytes <= free:
        return
    need = sum(disk_usage(src) for src in sources.values())
    if need + min_free_bytes > free:
        keep = f" plus {_human(min_free_bytes)} that must stay free" if min_free_bytes else ""
        raise CheckFailed(
            f"not enough disk space to snapshot {app}: a copy needs {_human(need)}{keep}, "
            f"but only {_human(free)} is free on {where}; the old snapshot is kept"
        )
