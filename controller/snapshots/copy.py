"""Raw copies of a volume tree that produce its manifest on the way, and live manifests."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from controller.snapshots import fsio
from controller.snapshots.index import EMPTY, VolumeIndex
from controller.snapshots.jobs import BATCH, READERS, Jobs, dup_all, thread_copier
from controller.snapshots.manifest import (
    ROOT,
    ManifestEntry,
    Observed,
    entry_from,
    entry_type,
    group_hardlinks,
    join,
    observe,
    parent_of,
    sort_key,
)
from controller.util import files
from controller.util.errors import CheckFailed

log = logging.getLogger(__name__)
T = TypeVar("T")
Copied = Literal["copied", "cloned", "vouched"]


@dataclass
class CopyResult:
    """A copied volume: its manifest, and where each file's digest came from.

    Digests of "copied" files were computed from the source bytes on the way; "cloned"
    files share the source's extents and have no digest yet (sha256 None) until it is read
    from the copy; "vouched" files were cloned and their digest comes from the live index.
    """

    entries: list[ManifestEntry]
    how: dict[str, Copied]
    source: dict[str, Observed]  # lstat of each source file when it was copied
    scanned_ns: int  # the clock before the walk began (for the live index)


class TreeCopy:
    """Copy one volume into a fresh directory: files, dirs, symlinks, hard links, metadata.

    One thread walks the source, makes directories and hands batches of a directory's
    files and symlinks to workers; hard links and directory metadata come last. Files are
    cloned where the filesystem can, else copied and hashed in one pass.
    """

    def __init__(self, index: VolumeIndex = EMPTY) -> None:
        self.index = index
        self.entries: list[ManifestEntry] = []
        self.how: dict[str, Copied] = {}
        self.source: dict[str, Observed] = {}
        self.inodes: dict[str, tuple[int, int]] = {}
        self._first_of_inode: dict[tuple[int, int], str] = {}
        self._links: list[tuple[str, str, os.stat_result]] = []  # (path, first path, stat)
        self._dirs: list[tuple[str, os.stat_result]] = []

    def run(self, src: Path, dst: Path) -> CopyResult:
        scanned_ns = time.time_ns()
        src_fd = fsio.open_root(src)
        try:
            os.mkdir(dst, 0o700)
            dst_fd = fsio.open_root(dst)
            try:
                self._dirs.append((ROOT, os.fstat(src_fd)))
                jobs: Jobs[_Copy] = Jobs()
                try:
                    self._walk(src_fd, dst_fd, ROOT, jobs, os.fstat(dst_fd).st_dev)
                finally:
                    for entry, how, seen in jobs.results():
                        self.entries.append(entry)
                        if how is not None:
                            self.how[entry.path] = how
                            self.source[entry.path] = seen
                self._make_links(dst_fd)
                self._set_dir_metadata(dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        return CopyResult(group_hardlinks(self.entries, self.inodes), self.how, self.source,
                          scanned_ns)

    def _walk(self, src_fd: int, dst_fd: int, rel: str, jobs: Jobs[_Copy], dst_dev: int) -> None:
        with os.scandir(src_fd) as it:
            names = sorted(entry.name for entry in it)
        batch: list[tuple[str, os.stat_result]] = []
        for name in names:
            path = join(rel, name)
            st = fsio.lstat_at(src_fd, name)
            if st is None:
                continue
            kind = entry_type(st.st_mode)
            if kind == "d":
                os.mkdir(name, 0o700, dir_fd=dst_fd)
                self._dirs.append((path, st))
                child_src = fsio.open_dir_at(src_fd, name, path)
                try:
                    child_dst = fsio.open_dir_at(dst_fd, name, path)
                    try:
                        self._walk(child_src, child_dst, path, jobs, dst_dev)
                    finally:
                        os.close(child_dst)
                finally:
                    os.close(child_src)
            elif kind in ("f", "l"):
                if kind == "f" and st.st_nlink > 1:
                    inode = (st.st_dev, st.st_ino)
                    self.inodes[path] = inode
                    first = self._first_of_inode.setdefault(inode, path)
                    if first != path:
                        self._links.append((path, first, st))
                        continue
                batch.append((name, st))
                if len(batch) >= BATCH:
                    self._submit(jobs, src_fd, dst_fd, rel, batch, dst_dev)
                    batch = []
            elif stat.S_ISSOCK(st.st_mode):
                # A socket is meaningless without the process that listened on it.
                log.info("snapshot skips the socket %s", path)
            else:
                raise CheckFailed(
                    f"{path}: a fifo or device node cannot be snapshotted (only files, "
                    "directories and symlinks)"
                )
        if batch:
            self._submit(jobs, src_fd, dst_fd, rel, batch, dst_dev)

    def _submit(self, jobs: Jobs[_Copy], src_fd: int, dst_fd: int, rel: str,
                batch: list[tuple[str, os.stat_result]], dst_dev: int) -> None:
        src_dup, dst_dup = dup_all(src_fd, dst_fd)
        index = self.index

        def job() -> list[_Copy]:
            return [_copy_one(src_dup, dst_dup, rel, name, st, dst_dev, index) for name, st in batch]

        jobs.submit(job, (src_dup, dst_dup))

    def _make_links(self, dst_fd: int) -> None:
        sha = {e.path: e.sha256 for e in self.entries if e.path in self.inodes}
        for path, first, st in self._links:
            # Both paths lie in the fresh copy, where every directory is one this copy made.
            os.link(first, path, src_dir_fd=dst_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            seen = observe(st)
            self.entries.append(entry_from(path, seen, sha[first]))
            self.how[path] = self.how[first]
            self.source[path] = seen

    def _set_dir_metadata(self, dst_fd: int) -> None:
        """Deepest first, after every entry exists: creating one moves its directory's mtime."""
        for path, st in reversed(self._dirs):
            fd = fsio.open_dir_chain(dst_fd, path)
            try:
                entry = entry_from(path, observe(st))
                fsio.set_fd_metadata(fd, entry, st.st_atime_ns)
            finally:
                os.close(fd)
            self.entries.append(entry)


# (entry, how a file's digest was found or None for a symlink, the source's lstat)
_Copy = tuple[ManifestEntry, Copied | None, Observed]


def _copy_one(src_fd: int, dst_fd: int, rel: str, name: str, st: os.stat_result, dst_dev: int,
              index: VolumeIndex) -> _Copy:
    path = join(rel, name)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=src_fd)
        seen = observe(st, target)
        entry = entry_from(path, seen)
        os.symlink(target, name, dir_fd=dst_fd)
        fsio.set_symlink_metadata(dst_fd, name, entry, st.st_atime_ns)
        return entry, None, seen
    seen = observe(st)
    how: Copied
    sfd = fsio.open_file_at(src_fd, name, path, (st.st_dev, st.st_ino))
    try:
        dfd = os.open(name, files.CREATE_FLAGS, 0o600, dir_fd=dst_fd)
        try:
            if fsio.CLONES.clone(sfd, dfd, st.st_dev, dst_dev):
                sha = index.vouched(path, seen)  # None: read from the copy after the sync
                how = "cloned" if sha is None else "vouched"
            else:
                sha, _ = thread_copier().copy(sfd, dfd, st)
                how = "copied"
            entry = entry_from(path, seen, sha)
            fsio.set_fd_metadata(dfd, entry, st.st_atime_ns)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return entry, how, seen


def copy_tree(src: Path, dst: Path, index: VolumeIndex = EMPTY) -> CopyResult:
    """Copy `src` to the new directory `dst`; the manifest of `src` (sorted) comes with it."""
    return TreeCopy(index).run(src, dst)


def remove_tree(path: Path) -> None:
    """Delete a tree of this store (never a volume): files in parallel, then directories."""
    root_fd = fsio.open_root(path)
    dirs: list[str] = []
    try:
        jobs: Jobs[None] = Jobs()
        try:
            _unlink_below(root_fd, ROOT, dirs, jobs)
        finally:
            jobs.results()
        for rel in reversed(dirs):
            parent, _, name = rel.rpartition("/")
            pfd = fsio.open_dir_chain(root_fd, parent or ROOT)
            try:
                os.rmdir(name, dir_fd=pfd)
            finally:
                os.close(pfd)
    finally:
        os.close(root_fd)
    os.rmdir(path)


def _unlink_below(dir_fd: int, rel: str, dirs: list[str], jobs: Jobs[None]) -> None:
    with os.scandir(dir_fd) as it:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]
    names = [name for name, is_dir in entries if not is_dir]
    for i in range(0, len(names), BATCH):
        batch = names[i : i + BATCH]
        (fd,) = dup_all(dir_fd)

        def job(fd: int = fd, batch: list[str] = batch) -> list[None]:
            for name in batch:
                os.unlink(name, dir_fd=fd)
            return []

        jobs.submit(job, (fd,))
    for name, is_dir in entries:
        if is_dir:
            path = join(rel, name)
            dirs.append(path)
            child = fsio.open_dir_at(dir_fd, name, path)
            try:
                _unlink_below(child, path, dirs, jobs)
            finally:
                os.close(child)


def _by_directory(items: Iterable[tuple[str, T]]) -> list[tuple[str, list[tuple[str, T]]]]:
    """Group (path, value) by parent directory, in batches of at most BATCH, in pre-order."""
    groups: dict[str, list[tuple[str, T]]] = {}
    for path, value in sorted(items, key=lambda item: sort_key(item[0])):
        groups.setdefault(parent_of(path), []).append((path, value))
    return [
        (parent, members[i : i + BATCH])
        for parent, members in groups.items()
        for i in range(0, len(members), BATCH)
    ]


def hash_entries(
    root_fd: int,
    wanted: list[tuple[str, tuple[int, int]]],
    *,
    drop_cache: bool = False,
) -> dict[str, str]:
    """sha256 of the given files (path, inode), in parallel; each inode is read once."""
    first_of: dict[tuple[int, int], str] = {}
    for path, inode in sorted(wanted, key=lambda item: sort_key(item[0])):
        first_of.setdefault(inode, path)

    def job(parent: str, members: list[tuple[str, tuple[int, int]]]) -> dict[tuple[int, int], str]:
        buf = thread_copier().buf
        out: dict[tuple[int, int], str] = {}
        pfd = fsio.open_dir_chain(root_fd, parent)
        try:
            for path, inode in members:
                fd = fsio.open_file_at(pfd, path.rpartition("/")[2], path, inode)
                try:
                    out[inode] = fsio.hash_fd(fd, buf, drop_cache=drop_cache)
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)
        return out

    by_inode: dict[tuple[int, int], str] = {}
    with ThreadPoolExecutor(READERS, thread_name_prefix="snapshot-hash") as pool:
        futures = [
            pool.submit(job, parent, members)
            for parent, members in _by_directory((p, i) for i, p in first_of.items())
        ]
        try:
            for future in futures:
                by_inode.update(future.result())
        finally:
            for future in futures:
                future.cancel()
    return {path: by_inode[inode] for path, inode in wanted}


def volume_manifest(root: Path) -> list[ManifestEntry]:
    """The full manifest (with sha256) of a live directory, as a snapshot of it would record."""
    root_fd = fsio.open_root(root)
    try:
        seen = fsio.scan(root_fd)
        files = [(p, s.inode) for p, s in seen.items() if s.type == "f"]
        hashes = hash_entries(root_fd, files)
    finally:
        os.close(root_fd)
    entries = [entry_from(p, s, hashes.get(p)) for p, s in seen.items() if s.type is not None]
    inodes = {p: s.inode for p, s in seen.items() if s.type == "f" and s.nlink > 1}
    return group_hardlinks(entries, inodes)
