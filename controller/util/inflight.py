"""In-flight run markers under `<state>/runs/`: one file per run, flock-held while it runs.

A marker whose lock nobody holds belongs to a run whose process died: a restarted
controller finishes or aborts it. Keyed by run id, never by domain.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.util import locks
from controller.util.errors import CcciError
from controller.util.files import atomic_write_json, read_json
from controller.util.paths import StateDir
from controller.util.timeutil import now_iso


@dataclass
class Marker:
    run_id: str
    path: Path
    data: dict[str, Any]
    lock_fd: int | None = None
    lock_path: Path | None = None
    gate_fd: int | None = None  # the prune gate, held shared while the run is in flight

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        atomic_write_json(self.path, self.data)

    def end(self, *, keep: bool = False) -> None:
        """Release the lock; remove the marker unless `keep` (then recovery will see it)."""
        if not keep:
            self.path.unlink(missing_ok=True)
            if self.lock_path is not None:
                self.lock_path.unlink(missing_ok=True)
        for fd in (self.lock_fd, self.gate_fd):
            if fd is not None:
                os.close(fd)
        self.lock_fd = self.gate_fd = None



class HeldElsewhere(CcciError):
    """Another live process (a second controller on this state dir) has this run in flight."""


def begin(state: StateDir, run_id: str, **fields: Any) -> Marker:
    """Mark `run_id` in flight until `Marker.end()`; the marker survives a crash, the lock not.
    HeldElsewhere at once when another process holds it: waiting would stall a whole pass."""
    state.runs.mkdir(parents=True, exist_ok=True)
    gate_fd = locks.hold_shared(state.prune_gate)
    lock_path = state.run_lock(run_id)
    try:
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except BaseException:
        os.close(gate_fd)
        raise
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HeldElsewhere(f"run {run_id} is in flight in another process") from None
        marker = Marker(
            run_id,
            state.run_marker(run_id),
            {"run": run_id, "pid": os.getpid(), "host": socket.gethostname(),
             "started_at": now_iso(), **fields},
            lock_fd,
            lock_path,
            gate_fd,
        )
        atomic_write_json(marker.path, marker.data)
    except BaseException:
        os.close(lock_fd)
        os.close(gate_fd)
        raise
    return marker


@contextlib.contextmanager
def in_flight(state: StateDir, run_id: str, **fields: Any) -> Iterator[Marker]:
    marker = begin(state, run_id, **fields)
    try:
        yield marker
    except BaseException:
        marker.end(keep=True)
        raise
    marker.end()


def is_in_flight(state: StateDir, run_id: str) -> bool:
    """True while some live process holds the run's marker lock."""
    path = state.run_lock(run_id)
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def in_flight_runs(state: StateDir) -> set[str]:
    if not state.runs.is_dir():
        return set()
    return {p.stem for p in state.runs.glob("*.lock") if is_in_flight(state, p.stem)}


def orphaned_markers(state: StateDir) -> list[Marker]:
    """Markers of runs whose process is gone (nobody holds the lock)."""
    out: list[Marker] = []
    if not state.runs.is_dir():
        return out
    for path in sorted(state.runs.glob("*.json")):
        run_id = path.stem
        if is_in_flight(state, run_id):
            continue
        data = read_json(path)
        out.append(Marker(run_id, path, data if isinstance(data, dict) else {"run": run_id}))
    return out


def forget(state: StateDir, marker: Marker) -> None:
    marker.path.unlink(missing_ok=True)
    state.run_lock(marker.run_id).unlink(missing_ok=True)
