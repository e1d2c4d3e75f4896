"""What every flow needs: the registry clone, its settings, the state dir, a progress sink."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from controller.registry.results import Phase, RunResult
from controller.registry.settings import Settings
from controller.registry.store import Identity, Registry
from controller.util.paths import StateDir

# Called as progress(phase_name, status) with status "start", "ok", "failed" or "skipped".
ProgressSink = Callable[[str, str], None]


def _no_progress(_phase: str, _status: str) -> None:
    return None


@dataclass
class Context:
    registry: Registry
    settings: Settings
    state: StateDir
    progress: ProgressSink = field(default=_no_progress)
    controller_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def open(cls, registry: Registry, state: StateDir, progress: ProgressSink | None = None) -> Context:
        settings = registry.settings()
        registry.identity = Identity.of(settings)
        return cls(registry=registry, settings=settings, state=state.ensure(),
                   progress=progress or _no_progress)

    def refresh_settings(self) -> None:
        self.settings = self.registry.settings()
        self.registry.identity = Identity.of(self.settings)


@contextmanager
def phase(ctx: Context, result: RunResult, name: str) -> Iterator[None]:
    """Time a phase into the result; a phase that raises is recorded as failed."""
    ctx.progress(name, "start")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        result.phases.append(Phase(name, "failed", time.monotonic() - started))
        ctx.progress(name, "failed")
        raise
    result.phases.append(Phase(name, "ok", time.monotonic() - started))
    ctx.progress(name, "ok")
