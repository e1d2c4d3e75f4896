"""Raw copies of a volume tree that produce its manifest on the way, and live manifests."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from controller.snapshots import fsio, workers
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
from controller.util.errors import CheckFailed

log = logging.getLogger(__name__)
T = TypeVar("T")
Copied = Literal["copied", "cloned", "vouched", "linked"]
# Files a walk hands to its threads before it starts worker processes for the rest: below
# this the processes' start would cost more than they save.
PROCESS_AFTER = 512


@dataclass
class CopyResult:
    """A copied volume: its manifest, and where each file's digest came from.

    Digests of "copied" files were computed from the source bytes on the way; "cloned"
    files share the source's extents and their digest was read from the clone right after
    it was made (with `read_back`, not yet: sha256 None until read after the sync);
    "vouched" files were cloned and their digest comes from the live index; "linked" files
    are hard links to the previous generation's inode, which the live index and that
    generation's manifest both vouch for.
    """

    entries: list[ManifestEntry]
    how: dict[str, Copied]
    source: dict[str, Observed]  # lstat of each source file when it was copied
    scanned_ns: int  # the clock before the walk began (for the live index)


@dataclass(frozen=True)
class PreviousCopy:
    """The same volume in the last-known-good, whose unchanged files a new take links to.

    Snapshot files are never written once taken (a restore clones or copies from them into
    a new inode), so two generations can share an inode, and removing the older one only
    removes names.
    """

    root: Path  # <generation>/volumes/<name>
    entries: dict[str, ManifestEntry]  # its manifest, by path


def linkable(entry: ManifestEntry, seen: Observed, previous: ManifestEntry | None) -> bool:
    """Pure: whether a source file may be a hard link to the previous generation's file.

    `entry` is the source file's manifest entry with the digest the live index vouches for
    (None: not vouched for). Only when the index vouches for it (the file is unchanged
    since it was last taken or restored) and the previous manifest records that same file
    exactly: digest, size, mode, owner and mtime. Hard-link groups are copied as before.
    """
    return (
        entry.sha256 is not None  # vouched for by the live index
        and previous is not None
        and previous.hardlink is None
        and seen.nlink == 1
        and entry == previous
    )


class TreeCopy:
    """Copy one volume into a fresh directory: files, dirs, symlinks, hard links, metadata.

    One thread walks the source, makes directories and hands batches of a directory's
    files and symlinks to workers; hard links and directory metadata come last. Files are
    cloned where the filesystem can, else copied and hashed in one pass.
    """

    def __init__(self, index: VolumeIndex = EMPTY, previous: PreviousCopy | None = None, *,
                 read_back: bool = False) -> None:
        self.index = index
        self.previous = previous
        self.read_back = read_back
        self.entries: list[ManifestEntry] = []
        self.how: dict[str, Copied] = {}
        self.source: dict[str, Observed] = {}
        self.inodes: dict[str, tuple[int, int]] = {}
        self._first_of_inode: dict[tuple[int, int], str] = {}
        self._links: list[tuple[str, str, os.stat_result]] = []  # (path, first path, stat)
        self._dirs: list[tuple[str, os.stat_result]] = []
        self._handed = 0  # files and symlinks handed to jobs so far
        self._handed_to_processes = 0
        self._processes: ProcessPoolExecutor | None = None
        self._roots: _Roots | None = None

    def run(self, src: Path, dst: Path) -> CopyResult:
        try:
            return self._run(src, dst)
        except BrokenProcessPool as exc:  # one was killed (the OOM killer, an operator)
            raise CheckFailed(f"{src}: a worker process copying it ended unexpectedly ({exc})") from exc

    def _run(self, src: Path, dst: Path) -> CopyResult:
        scanned_ns = time.time_ns()
        src_fd = fsio.open_root(src)
        try:
            os.mkdir(dst, 0o700)
            dst_fd = fsio.open_root(dst)
            try:
                src_st, dst_st = os.fstat(src_fd), os.fstat(dst_fd)
                self._dirs.append((ROOT, src_st))
                jobs: Jobs[_Copy | _HardLinked] = Jobs()
                prev_fd = self._open_previous(-1, ROOT)
                dst_dev = dst_st.st_dev
                if self._reads_every_file() and workers.can_use_processes():
                    self._roots = _Roots(str(src), (src_st.st_dev, src_st.st_ino), str(dst),
                                         (dst_dev, dst_st.st_ino))
                try:
                    self._walk(src_fd, dst_fd, prev_fd, ROOT, jobs, dst_dev)
                finally:
                    if prev_fd >= 0:
                        os.close(prev_fd)
                    hard_linked = self._collect(jobs, src)
                self._copy_hard_linked(src_fd, dst_fd, dst_dev, hard_linked)
                self._make_links(dst_fd)
                self._set_dir_metadata(dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        return CopyResult(group_hardlinks(self.entries, self.inodes), self.how, self.source,
                          scanned_ns)

    def _collect(self, jobs: Jobs[_Copy | _HardLinked], src: Path) -> list[_HardLinked]:
        """Wait for every job (the first failure is raised); worker processes end with them."""
        hard_linked: list[_HardLinked] = []
        try:
            for done in jobs.results():
                if isinstance(done, _HardLinked):
                    hard_linked.append(done)
                else:
                    self._add(done)
        finally:
            if self._processes is not None:
                self._processes.shutdown(wait=True, cancel_futures=True)
                log.info("copy of %s: %d of %d files and symlinks went to %d worker processes",
                         src, self._handed_to_processes, self._handed, workers.PROCESSES)
        return hard_linked

    def _reads_every_file(self) -> bool:
        """Nothing to link or vouch for (a first take): every file is cloned or copied and read."""
        return self.previous is None and not self.index.rows

    def _open_previous(self, parent_fd: int, path: str) -> int:
        """The previous generation's directory at `path`, or -1 when there is none to link from."""
        if self.previous is None:
            return -1
        entry = self.previous.entries.get(path)
        if entry is None or entry.type != "d":
            return -1
        try:
            if path == ROOT:
                return fsio.open_root(self.previous.root)
            return fsio.open_dir_at(parent_fd, path.rpartition("/")[2], path)
        except (OSError, CheckFailed) as exc:
            # A damaged previous generation only means copying what could have been linked.
            log.warning("previous snapshot: cannot open %s (%s); copying its files", path, exc)
            return -1

    def _add(self, copied: _Copy) -> None:
        entry, how, seen = copied
        self.entries.append(entry)
        if how is not None:
            self.how[entry.path] = how
            self.source[entry.path] = seen

    def _copy_hard_linked(self, src_fd: int, dst_fd: int, dst_dev: int,
                          found: list[_HardLinked]) -> None:
        """Copy the first path of each hard-linked inode; link the others to it later."""
        how = _How(self.index, {}, -1, dst_dev, self.read_back)
        for item in sorted(found, key=lambda item: sort_key(item.path)):
            inode = (item.st.st_dev, item.st.st_ino)
            self.inodes[item.path] = inode
            first = self._first_of_inode.setdefault(inode, item.path)
            if first != item.path:
                self._links.append((item.path, first, item.st))
                continue
            parent = parent_of(item.path)
            src_pfd = fsio.open_dir_chain(src_fd, parent)
            try:
                dst_pfd = fsio.open_dir_chain(dst_fd, parent)
                try:
                    copied = _copy_one(src_pfd, dst_pfd, parent, item.path.rpartition("/")[2],
                                       item.st, how)
                    self._add(_hash_clones([copied])[0] if isinstance(copied, _Clone) else copied)
                finally:
                    os.close(dst_pfd)
            finally:
                os.close(src_pfd)

    def _walk(self, src_fd: int, dst_fd: int, prev_fd: int, rel: str,
              jobs: Jobs[_Copy | _HardLinked], dst_dev: int) -> None:
        with os.scandir(src_fd) as it:
            # Files and symlinks (by the directory's d_type, no syscall) go to the workers
            # unstat'ed: their lstat, cold after a cache drop, runs there in parallel.
            found = sorted((entry.name, entry.is_symlink() or entry.is_file(follow_symlinks=False))
                           for entry in it)
        batch: list[str] = []
        for name, leaf in found:
            if leaf:
                batch.append(name)
                if len(batch) >= BATCH:
                    self._submit(jobs, src_fd, dst_fd, prev_fd, rel, batch, dst_dev)
                    batch = []
                continue
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
                        child_prev = self._open_previous(prev_fd, path) if prev_fd >= 0 else -1
                        try:
                            self._walk(child_src, child_dst, child_prev, path, jobs, dst_dev)
                        finally:
                            if child_prev >= 0:
                                os.close(child_prev)
                    finally:
                        os.close(child_dst)
                finally:
                    os.close(child_src)
            elif kind in ("f", "l"):
                batch.append(name)  # it was something else when the directory was read
            elif stat.S_ISSOCK(st.st_mode):
                # A socket is meaningless without the process that listened on it.
                log.info("snapshot skips the socket %s", path)
            else:
                raise CheckFailed(
                    f"{path}: a fifo or device node cannot be snapshotted (only files, "
                    "directories and symlinks)"
                )
        if batch:
            self._submit(jobs, src_fd, dst_fd, prev_fd, rel, batch, dst_dev)

    def _submit(self, jobs: Jobs[_Copy | _HardLinked], src_fd: int, dst_fd: int, prev_fd: int,
                rel: str, batch: list[str], dst_dev: int) -> None:
        self._handed += len(batch)
        if self._roots is not None and self._handed > PROCESS_AFTER:
            if self._processes is None:
                self._processes = workers.process_pool()
            jobs.submit_elsewhere(self._processes, _copy_batch_in_process, self._roots,
                                 self.read_back, rel, batch)
            self._handed_to_processes += len(batch)
            return
        fds = dup_all(src_fd, dst_fd, *([prev_fd] if prev_fd >= 0 else []))
        src_dup, dst_dup = fds[:2]
        prev_dup = fds[2] if len(fds) > 2 else -1
        how = _How(self.index, self.previous.entries if self.previous else {}, prev_dup,
                   dst_dev, self.read_back)
        jobs.submit(lambda: _copy_batch(src_dup, dst_dup, rel, batch, how), fds)

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


@dataclass(frozen=True)
class _Roots:
    """Where a worker process finds a copy's two trees: by path, each checked by its inode."""

    src: str
    src_inode: tuple[int, int]
    dst: str
    dst_inode: tuple[int, int]

    def open_dirs(self, stack: contextlib.ExitStack, rel: str) -> tuple[int, int]:
        """The directory `rel` in both trees, closed with `stack`."""
        return (_open_below(stack, self.src, self.src_inode, rel),
                _open_below(stack, self.dst, self.dst_inode, rel))


def _open_below(stack: contextlib.ExitStack, root: str, inode: tuple[int, int], rel: str) -> int:
    root_fd = fsio.open_root(Path(root))
    stack.callback(os.close, root_fd)
    st = os.fstat(root_fd)
    if (st.st_dev, st.st_ino) != inode:
        raise CheckFailed(f"{root}: was replaced while being copied")
    fd = fsio.open_dir_chain(root_fd, rel)
    stack.callback(os.close, fd)
    return fd


def _copy_batch_in_process(roots: _Roots, read_back: bool, rel: str,
                           batch: list[str]) -> list[_Copy | _HardLinked]:
    """In a worker process: copy one batch of a directory's files, with nothing to link or vouch."""
    with contextlib.ExitStack() as stack:
        src_fd, dst_fd = roots.open_dirs(stack, rel)
        return _copy_batch(src_fd, dst_fd, rel, batch,
                           _How(EMPTY, {}, -1, roots.dst_inode[0], read_back))


def _copy_batch(src_fd: int, dst_fd: int, rel: str, batch: list[str],
                how: _How) -> list[_Copy | _HardLinked]:
    """Copy one batch of a directory's files and symlinks; clones are hashed in windows."""
    out: list[_Copy | _HardLinked] = []
    clones: list[_Clone] = []
    try:
        for name in batch:
            done = _copy_leaf(src_fd, dst_fd, rel, name, how)
            if isinstance(done, _Clone):
                clones.append(done)
                if len(clones) >= fsio.READ_AHEAD:
                    out.extend(_hash_clones(clones))
            elif done is not None:
                out.append(done)
        out.extend(_hash_clones(clones))
        return out
    finally:
        while clones:  # what a failure left open
            os.close(clones.pop().fd)


@dataclass(frozen=True)
class _HardLinked:
    """A source file with more than one name: copied after the walk, which finds them all."""

    path: str
    st: os.stat_result


def _copy_leaf(src_fd: int, dst_fd: int, rel: str, name: str,
               how: _How) -> _Copy | _Clone | _HardLinked | None:
    """lstat a file or symlink the walk found and copy it; None when it is gone."""
    path = join(rel, name)
    st = fsio.lstat_at(src_fd, name)
    if st is None:
        return None
    if entry_type(st.st_mode) not in ("f", "l"):
        raise CheckFailed(f"{path}: changed while being read")
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return _HardLinked(path, st)
    return _copy_one(src_fd, dst_fd, rel, name, st, how)

# What a failed link to the previous generation means: nothing to link to (that file
# is gone: the old generation is damaged) or too many links; then the file is copied.
_CANNOT_LINK = frozenset({errno.ENOENT, errno.EMLINK})


@dataclass(frozen=True)
class _How:
    """What a copy job needs to know to pick link, clone or copy for its files."""

    index: VolumeIndex
    previous: dict[str, ManifestEntry]
    prev_fd: int  # the previous generation's directory of this batch, or -1
    dst_dev: int
    read_back: bool  # a clone's digest is read after the sync, not right away


def _link_previous(src_name: str, how: _How, dst_fd: int, path: str) -> bool:
    try:
        os.link(src_name, src_name, src_dir_fd=how.prev_fd, dst_dir_fd=dst_fd,
                follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _CANNOT_LINK:
            raise
        log.warning("previous snapshot: cannot link %s (%s); copying it", path, exc.strerror)
        return False
    return True


def _copy_one(src_fd: int, dst_fd: int, rel: str, name: str, st: os.stat_result,
              how_to: _How) -> _Copy | _Clone:
    """Link, clone or copy one file or symlink; a clone still to be hashed comes back as `_Clone`."""
    path = join(rel, name)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=src_fd)
        seen = observe(st, target)
        entry = entry_from(path, seen)
        os.symlink(target, name, dir_fd=dst_fd)
        fsio.set_symlink_metadata(dst_fd, name, entry, st.st_atime_ns)
        return entry, None, seen
    seen = observe(st)
    vouched = how_to.index.vouched(path, seen)
    if vouched is not None and how_to.prev_fd >= 0:
        entry = entry_from(path, seen, vouched)
        if linkable(entry, seen, how_to.previous.get(path)) and _link_previous(
            name, how_to, dst_fd, path
        ):
            # The inode keeps the previous take's metadata, equal to the source's (linkable).
            return entry, "linked", seen
    how: Copied
    sfd = fsio.open_file_at(src_fd, name, path, (st.st_dev, st.st_ino))
    try:
        # Made with the source's permission bits (never setuid/setgid: chown would clear them):
        # inside the 0700 generation no one else can open it, and under the usual umask the
        # file needs no chmod afterwards, a journal transaction per file saved.
        dfd = os.open(name, fsio.READ_WRITE_CREATE, st.st_mode & 0o777, dir_fd=dst_fd)
        try:
            if fsio.CLONES.clone(sfd, dfd, st.st_dev, how_to.dst_dev):
                if vouched is None and not how_to.read_back:
                    clone, dfd = _Clone(path, seen, dfd, st.st_atime_ns), -1  # the clone owns it now
                    return clone
                sha, how = vouched, ("cloned" if vouched is None else "vouched")
            else:
                sha, _ = thread_copier().copy(sfd, dfd, st)
                how = "copied"
            entry = entry_from(path, seen, sha)
            fsio.set_fd_metadata(dfd, entry, st.st_atime_ns)
        finally:
            if dfd >= 0:
                os.close(dfd)
    finally:
        os.close(sfd)
    return entry, how, seen


@dataclass(frozen=True)
class _Clone:
    """A clone made but not yet hashed: its descriptor stays open until `_hash_clones`."""

    path: str
    seen: Observed
    fd: int
    atime_ns: int


def _hash_clones(clones: list[_Clone]) -> list[_Copy]:
    """Hash fresh clones and set their metadata, closing each (the list empties as they close).

    A clone is a new inode with nothing cached: hashing it reads the extents it shares from
    the disk (the clone flushed the source's dirty pages first), while other workers still
    clone, instead of after them all; their reads are queued together (`fsio.hash_files`).
    """
    try:
        shas = fsio.hash_files([clone.fd for clone in clones], thread_copier().buf)
        done: list[_Copy] = []
        for clone, sha in zip(clones, shas, strict=True):
            entry = entry_from(clone.path, clone.seen, sha)
            fsio.set_fd_metadata(clone.fd, entry, clone.atime_ns)
            done.append((entry, "cloned", clone.seen))
        return done
    finally:
        while clones:
            os.close(clones.pop().fd)


def copy_tree(src: Path, dst: Path, index: VolumeIndex = EMPTY,
              previous: PreviousCopy | None = None, *, read_back: bool = False) -> CopyResult:
    """Copy `src` to the new directory `dst`; the manifest of `src` (sorted) comes with it.

    Files the live index and `previous` both vouch for are hard-linked to it. With
    `read_back`, clones get their digest later, from the disk after the sync.
    """
    return TreeCopy(index, previous, read_back=read_back).run(src, dst)


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
            for start in range(0, len(members), fsio.READ_AHEAD):
                window = members[start:start + fsio.READ_AHEAD]
                fds: list[int] = []
                try:
                    for path, inode in window:
                        fds.append(fsio.open_file_at(pfd, path.rpartition("/")[2], path, inode))
                    shas = fsio.hash_files(fds, buf, drop_cache=drop_cache)
                    out.update((inode, sha) for (_, inode), sha in zip(window, shas, strict=True))
                finally:
                    for fd in fds:
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
