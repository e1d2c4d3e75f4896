"""Descriptor-relative file operations that never follow a symlink."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import cast

from controller.snapshots.manifest import ROOT, ManifestEntry, Observed, join, observe
from controller.util.errors import CheckFailed
from controller.util.files import CREATE_FLAGS, TEMP_PREFIX

log = logging.getLogger(__name__)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a fifo that replaced a file between lstat and open must not hang.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A new file that is read back as well: a clone's digest is read from it.
READ_WRITE_CREATE = (CREATE_FLAGS & ~os.O_WRONLY) | os.O_RDWR
CHUNK = 1 << 20
# Files whose reads one thread queues at once, and how much of each (the kernel's own
# readahead takes over a larger file as it is read).
READ_AHEAD = 16
READ_AHEAD_BYTES = 4 << 20
FICLONE = 0x40049409

_ZEROS = bytes(CHUNK)


class Unsafe(CheckFailed):
    """A path component is a symlink or not a directory: writing there could escape."""


def temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(6)}"


def open_root(path: Path) -> int:
    """Open a (resolved) directory; the last component must not be a symlink."""
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as exc:
        raise CheckFailed(f"{path}: cannot open the directory ({exc.strerror})") from exc


def open_dir_at(parent_fd: int, name: str, where: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Unsafe(f"{where}: is a symlink or not a directory; refusing to go through it") from exc
        raise


def open_dir_chain(root_fd: int, path: str) -> int:
    """Open `path` below `root_fd` one component at a time, refusing symlinks on the way."""
    fd = os.dup(root_fd)
    if path == ROOT:
        return fd
    walked = ROOT
    try:
        for part in path.split("/"):
            walked = join(walked, part)
            child = open_dir_at(fd, part, walked)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class DirCursor:
    """Directory descriptors for a pre-order walk: keeps only the current ancestors open."""

    def __init__(self, root_fd: int) -> None:
        self._stack: list[tuple[str, int]] = [(ROOT, os.dup(root_fd))]

    def fd_for(self, path: str) -> int:
        while len(self._stack) > 1 and not _within(path, self._stack[-1][0]):
            os.close(self._stack.pop()[1])
        top, fd = self._stack[-1]
        if top == path:
            return fd
        rest = path if top == ROOT else path[len(top) + 1 :]
        walked = top
        for part in rest.split("/"):
            walked = join(walked, part)
            fd = open_dir_at(fd, part, walked)
            self._stack.append((walked, fd))
        return fd

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[1])

    def __enter__(self) -> DirCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _within(path: str, ancestor: str) -> bool:
    return ancestor == ROOT or path == ancestor or path.startswith(ancestor + "/")


# -- reading a tree ---------------------------------------------------------------------------


def lstat_at(parent_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def observe_at(parent_fd: int, name: str) -> Observed | None:
    st = lstat_at(parent_fd, name)
    if st is None:
        return None
    target = os.readlink(name, dir_fd=parent_fd) if stat.S_ISLNK(st.st_mode) else None
    return observe(st, target)


def scan(root_fd: int) -> dict[str, Observed]:
    """lstat every entry below `root_fd` (including the root as "."); symlinks are not followed."""
    return rescan(root_fd, {}, lambda _path, _earlier: True)


def rescan(
    root_fd: int, before: Mapping[str, Observed], restat: Callable[[str, Observed], bool]
) -> dict[str, Observed]:
    """Like scan, but an entry `before` has and `restat` declines keeps its earlier lstat.

    Every directory is listed again, so what appeared or vanished since is seen; every
    entry that is new, or that `restat` picks, is lstat'ed again.
    """
    found = {ROOT: observe(os.fstat(root_fd))}
    _rescan_dir(root_fd, ROOT, before, restat, found)
    return found


def _rescan_dir(dir_fd: int, rel: str, before: Mapping[str, Observed],
                restat: Callable[[str, Observed], bool], found: dict[str, Observed]) -> None:
    with os.scandir(dir_fd) as it:
        names = [entry.name for entry in it]
    for name in names:
        path = join(rel, name)
        earlier = before.get(path)
        seen = observe_at(dir_fd, name) if earlier is None or restat(path, earlier) else earlier
        if seen is None:
            continue
        found[path] = seen
        if seen.type == "d":
            child = open_dir_at(dir_fd, name, path)
            try:
                _rescan_dir(child, path, before, restat, found)
            finally:
                os.close(child)


# -- content ----------------------------------------------------------------------------------


def open_file_at(parent_fd: int, name: str, where: str, inode: tuple[int, int] | None = None) -> int:
    fd = os.open(name, READ_FLAGS, dir_fd=parent_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (inode is not None and (st.st_dev, st.st_ino) != inode):
        os.close(fd)
        raise CheckFailed(f"{where}: changed while being read")
    return fd


def read_ahead(fds: list[int], *, drop_cache: bool = False) -> None:
    """Queue the first READ_AHEAD_BYTES of each file for reading, all at once: the disk then
    serves many small files in parallel while the caller hashes the first, where reading them
    one by one keeps one request in flight per thread (on a cold tree of small files, about
    3x faster here). With `drop_cache`, clean cached pages are dropped first, so what the
    caller reads comes from the disk."""
    for fd in fds:
        if drop_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)


def hash_files(fds: list[int], buf: bytearray, *, drop_cache: bool = False) -> list[str]:
    """sha256 of whole files, their reads queued together first (`read_ahead`)."""
    read_ahead(fds, drop_cache=drop_cache)
    return [hash_fd(fd, buf) for fd in fds]


def hash_fd(fd: int, buf: bytearray) -> str:
    """sha256 of a whole file, reading it through one reused buffer."""
    view = memoryview(buf)
    digest = hashlib.sha256()
    offset = 0
    while True:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            return digest.hexdigest()
        digest.update(view[:n])
        offset += n


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _hash_zeros(digest: hashlib._Hash, length: int) -> None:
    while length > 0:
        step = min(length, CHUNK)
        digest.update(_ZEROS[:step])
        length -= step


def _data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the parts of a sparse file that hold data; holes read as zeros."""
    segments: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        segments.append((start, min(end, size)))
        offset = end
    return segments


# What FICLONE and copy_file_range say when two files cannot share extents (another
# filesystem, one without reflink, a kernel without the call), as opposed to an I/O error.
_CANNOT_CLONE = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS})


def _clone_whole(src_fd: int, dst_fd: int) -> None:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Kernels before 5.18 refuse FICLONE between two mounts of one filesystem (a bind
        # mount); copy_file_range shares the extents there.
        size, offset = os.fstat(src_fd).st_size, 0
        while offset < size:
            n = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
            if n == 0:
                raise OSError(errno.EIO, "copy_file_range stopped before the end") from exc
            offset += n


class CloneSupport:
    """Whether files can be cloned (share extents) from one filesystem to another.

    Learnt once per (source device, destination device): the first clone that fails with
    "cannot" turns cloning off for that pair; everything else there is copied.
    """

    def __init__(self) -> None:
        self._verdict: dict[tuple[int, int], bool] = {}

    def clone(self, src_fd: int, dst_fd: int, src_dev: int, dst_dev: int) -> bool:
        """Make the empty dst share src's extents; False (dst still empty) when it cannot."""
        pair = (src_dev, dst_dev)
        if src_dev != dst_dev or self._verdict.get(pair) is False:
            return False
        try:
            _clone_whole(src_fd, dst_fd)
        except OSError as exc:
            if exc.errno not in _CANNOT_CLONE:
                raise
            os.ftruncate(dst_fd, 0)
            if pair not in self._verdict:
                log.info("device %s cannot clone files (%s); copying instead", _device(dst_dev),
                         exc.strerror)
            self._verdict[pair] = False
            return False
        if pair not in self._verdict:
            log.info("device %s clones files (reflink): copies share extents", _device(dst_dev))
        self._verdict[pair] = True
        return True


def _device(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


CLONES = CloneSupport()


class Copier:
    """Copies file contents while hashing them: each source byte is read once."""

    def __init__(self) -> None:
        self.buf = bytearray(CHUNK)

    def copy(self, src_fd: int, dst_fd: int, st: os.stat_result) -> tuple[str, int]:
        """Copy src to the empty dst; return (sha256, bytes written)."""
        if st.st_blocks * 512 < st.st_size:
            return self._copy_sparse(src_fd, dst_fd, st.st_size)
        view = memoryview(self.buf)
        digest = hashlib.sha256()
        offset = 0
        while True:
            n = os.preadv(src_fd, [view], offset)
            if n == 0:
                return digest.hexdigest(), offset
            chunk = view[:n]
            digest.update(chunk)
            _write_all(dst_fd, chunk, offset)
            offset += n

    def _copy_sparse(self, src_fd: int, dst_fd: int, size: int) -> tuple[str, int]:
        view = memoryview(self.buf)
        digest = hashlib.sha256()
        position = written = 0
        for start, end in _data_segments(src_fd, size):
            _hash_zeros(digest, start - position)
            offset = start
            while offset < end:
                n = os.preadv(src_fd, [view[: min(CHUNK, end - offset)]], offset)
                if n == 0:
                    break
                chunk = view[:n]
                digest.update(chunk)
                _write_all(dst_fd, chunk, offset)
                offset += n
                written += n
            position = offset
        _hash_zeros(digest, size - position)
        os.ftruncate(dst_fd, size)
        return digest.hexdigest(), written


# -- metadata ---------------------------------------------------------------------------------


def set_fd_metadata(fd: int, entry: ManifestEntry, atime_ns: int) -> None:
    """Owner first: chown clears setuid/setgid, so the mode comes after it.

    What is already right is left alone: each change is a journal transaction, and a tree
    of 20 000 fresh files owned by root needs no chown at all.
    """
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
        os.fchown(fd, entry.uid, entry.gid)
        st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) != entry.mode:
        os.fchmod(fd, entry.mode)
    os.utime(fd, ns=(atime_ns, entry.mtime_ns))


def set_symlink_metadata(parent_fd: int, name: str, entry: ManifestEntry, atime_ns: int) -> None:
    os.chown(name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
    os.utime(name, ns=(atime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)


def remove_at(parent_fd: int, name: str) -> None:
    """Remove a file, symlink or whole directory below `parent_fd` without following links."""
    st = lstat_at(parent_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


# -- durability -------------------------------------------------------------------------------


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return cast("Callable[[int], int]", func)


_syncfs = _load_syncfs()


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page and inode of the filesystem holding `path` (one call, not 20k)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _syncfs is None or _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def read_capped(path: Path, cap: int) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise CheckFailed(f"{path}: larger than {cap} bytes; refusing to read it")
    return data


def iter_dir_names(path: Path) -> Iterator[str]:
    with os.scandir(path) as it:
        for entry in it:
            yield entry.name
