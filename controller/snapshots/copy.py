"""Raw copies of a volume tree that produce its manifest on the way, and live manifests."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from controller.snapshots import fsio
from controller.snapshots.manifest import (
    ROOT,
    ManifestEntry,
    entry_from,
    entry_type,
    group_hardlinks,
    join,
    observe,
    sort_key,
)
from controller.util.errors import CheckFailed

log = logging.getLogger(__name__)


class TreeCopy:
    """Copy one volume into a fresh directory: files, dirs, symlinks, hard links, metadata."""

    def __init__(self, copier: fsio.Copier | None = None) -> None:
        self.copier = copier or fsio.Copier()
        self.entries: list[ManifestEntry] = []
        self.inodes: dict[str, tuple[int, int]] = {}
        # inode -> (path of its first copy, sha256): later names become hard links to it.
        self._first_copy: dict[tuple[int, int], tuple[str, str]] = {}
        self._dst_root = -1

    def run(self, src: Path, dst: Path) -> list[ManifestEntry]:
        src_fd = fsio.open_root(src)
        try:
            os.mkdir(dst, 0o700)
            self._dst_root = fsio.open_root(dst)
            try:
                root_st = os.fstat(src_fd)
                self._copy_dir(src_fd, self._dst_root, ROOT)
                fsio.set_fd_metadata(
                    self._dst_root, entry_from(ROOT, observe(root_st)), root_st.st_atime_ns
                )
                self.entries.append(entry_from(ROOT, observe(root_st)))
            finally:
                os.close(self._dst_root)
        finally:
            os.close(src_fd)
        return group_hardlinks(self.entries, self.inodes)

    def _copy_dir(self, src_fd: int, dst_fd: int, rel: str) -> None:
        with os.scandir(src_fd) as it:
            names = sorted(entry.name for entry in it)
        for name in names:
            path = join(rel, name)
            st = fsio.lstat_at(src_fd, name)
            if st is None:
                continue
            kind = entry_type(st.st_mode)
            if kind == "d":
                self._copy_subdir(src_fd, dst_fd, name, path, st)
            elif kind == "f":
                self._copy_file(src_fd, dst_fd, name, path, st)
            elif kind == "l":
                target = os.readlink(name, dir_fd=src_fd)
                os.symlink(target, name, dir_fd=dst_fd)
                entry = entry_from(path, observe(st, target))
                fsio.set_symlink_metadata(dst_fd, name, entry, st.st_atime_ns)
                self.entries.append(entry)
            elif stat.S_ISSOCK(st.st_mode):
                # A socket is meaningless without the process that listened on it.
                log.info("snapshot skips the socket %s", path)
            else:
                raise CheckFailed(
                    f"{path}: a fifo or device node cannot be snapshotted (only files, "
                    "directories and symlinks)"
                )

    def _copy_subdir(self, src_fd: int, dst_fd: int, name: str, path: str, st: os.stat_result) -> None:
        os.mkdir(name, 0o700, dir_fd=dst_fd)
        child_src = fsio.open_dir_at(src_fd, name, path)
        try:
            child_dst = fsio.open_dir_at(dst_fd, name, path)
            try:
                self._copy_dir(child_src, child_dst, path)
                # After its contents: creating them moved the copy's mtime.
                entry = entry_from(path, observe(st))
                fsio.set_fd_metadata(child_dst, entry, st.st_atime_ns)
                self.entries.append(entry)
            finally:
                os.close(child_dst)
        finally:
            os.close(child_src)

    def _copy_file(self, src_fd: int, dst_fd: int, name: str, path: str, st: os.stat_result) -> None:
        inode = (st.st_dev, st.st_ino)
        first = self._first_copy.get(inode) if st.st_nlink > 1 else None
        if first is not None:
            first_path, first_sha = first
            os.link(
                first_path, path,
                src_dir_fd=self._dst_root, dst_dir_fd=self._dst_root, follow_symlinks=False,
            )
            self.entries.append(entry_from(path, observe(st), first_sha))
            self.inodes[path] = inode
            return
        sfd = fsio.open_file_at(src_fd, name, path, inode)
        try:
            dfd = os.open(name, fsio.CREATE_FLAGS, 0o600, dir_fd=dst_fd)
            try:
                sha, _ = self.copier.copy(sfd, dfd, st)
                entry = entry_from(path, observe(st), sha)
                fsio.set_fd_metadata(dfd, entry, st.st_atime_ns)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        self.entries.append(entry)
        if st.st_nlink > 1:
            self._first_copy[inode] = (path, sha)
            self.inodes[path] = inode


def copy_tree(src: Path, dst: Path, copier: fsio.Copier | None = None) -> list[ManifestEntry]:
    """Copy `src` to the new directory `dst`; return the manifest of `src`, sorted."""
    return TreeCopy(copier).run(src, dst)


def hash_entries(
    root_fd: int,
    wanted: list[tuple[str, tuple[int, int]]],
    *,
    drop_cache: bool = False,
) -> dict[str, str]:
    """sha256 of the given files (path, inode), in pre-order; each inode is read once."""
    buf = bytearray(fsio.CHUNK)
    by_inode: dict[tuple[int, int], str] = {}
    out: dict[str, str] = {}
    with fsio.DirCursor(root_fd) as cursor:
        for path, inode in sorted(wanted, key=lambda item: sort_key(item[0])):
            if inode not in by_inode:
                parent, _, name = path.rpartition("/")
                fd = fsio.open_file_at(cursor.fd_for(parent or ROOT), name, path, inode)
                try:
                    by_inode[inode] = fsio.hash_fd(fd, buf, drop_cache=drop_cache)
                finally:
                    os.close(fd)
            out[path] = by_inode[inode]
    return out


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
