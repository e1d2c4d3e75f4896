"""Inter-process locks on files: released by the kernel when the holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import filelock

from controller.util.errors import CcciError

_locks: dict[str, filelock.FileLock] = {}
_guard = threading.Lock()


def _lock_for(path: Path) -> filelock.FileLock:
    key = str(path.resolve())
    with _guard:
        lock = _locks.get(key)
        if lock is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # thread_local: each thread has its own descriptor, so threads of one
            # process exclude each other too, and a thread may re-enter its own lock.
            lock = filelock.FileLock(key, thread_local=True)
            _locks[key] = lock
        return lock


@contextlib.contextmanager
def exclusive(path: Path, *, timeout: float = -1, what: str = "") -> Iterator[None]:
    """Hold an exclusive flock on `path`; `timeout` < 0 waits forever."""
    lock = _lock_for(path)
    try:
        lock.acquire(timeout=timeout, poll_interval=0.05)
    except filelock.Timeout as exc:
        raise CcciError(f"{what or path} is locked by another process") from exc
    try:
        yield
    finally:
        lock.release()


def is_held_elsewhere(path: Path) -> bool:
    """True when some other holder has the lock on `path` right now."""
    if not path.exists():
        return False
    probe = filelock.FileLock(str(path), thread_local=True)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True
    probe.release()
    return False


# -- the prune gate: runs hold it shared, prune takes it exclusive only when nobody holds it ------

def hold_shared(path: Path) -> int:
    """Take a shared flock on `path` (waits only while a prune holds it); returns the fd to
    close to release. Each call opens its own descriptor, so threads hold it independently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def shared(path: Path) -> Iterator[None]:
    fd = hold_shared(path)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_if_free(path: Path) -> Iterator[bool]:
    """Yield True holding an exclusive flock on `path`, or False at once when anyone holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
