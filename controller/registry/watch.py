"""Watch a registry clone's work tree (never `.git/`) and wake the daemon, debounced."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

_CHANGES = frozenset({"created", "deleted", "modified", "moved", "closed"})


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, wake: Any) -> None:
        self.root = str(root)
        self.git_dir = str(root / ".git")
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return  # opened / closed-without-write: our own reads must not wake the loop
        paths = [str(event.src_path)]
        if getattr(event, "dest_path", ""):
            paths.append(str(event.dest_path))
        for path in paths:
            if path == self.git_dir or path.startswith(self.git_dir + "/"):
                continue
            self.wake()
            return


class ChangeWatcher:
    """`wait(timeout)` returns True once the tree changed and stayed quiet for `debounce` s."""

    def __init__(self, root: Path, *, debounce: float = 0.1) -> None:
        self.root = root
        self.debounce = debounce
        self._changed = threading.Event()
        self._last_change = 0.0
        self._observer: Any = None

    def _wake(self) -> None:
        self._last_change = time.monotonic()
        self._changed.set()

    def poke(self) -> None:
        """Wake the waiter without a file change (a finished run, a signal)."""
        self._last_change = 0.0
        self._changed.set()

    def start(self) -> ChangeWatcher:
        observer = Observer()
        observer.schedule(_Handler(self.root, self._wake), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        return self

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def wait(self, timeout: float) -> bool:
        if not self._changed.wait(timeout):
            return False
        # Debounce: a commit touches many files; act once the burst is over.
        while True:
            quiet_for = time.monotonic() - self._last_change
            if quiet_for >= self.debounce:
                break
            time.sleep(self.debounce - quiet_for)
        self._changed.clear()
        return True
