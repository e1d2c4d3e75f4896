"""What every flow needs: the registry clone, its settings, the state dir, progress, the sinks."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from controller.registry.documents import Request, SnapshotIndex
from controller.registry.results import Phase, RunResult
from controller.registry.settings import Settings
from controller.registry.store import Identity, Registry
from controller.util import names
from controller.util.inflight import Marker
from controller.util.paths import StateDir

# Called as progress(phase_name, status) with status "start", "ok", "failed" or "skipped".
ProgressSink = Callable[[str, str], None]


def _no_progress(_phase: str, _status: str) -> None:
    return None


T = TypeVar("T")


class Housekeeping:
    """What a run must still do once its asserts have decided: teardown, restore, giving back
    the app lock. A runner registers each step as it takes on the thing the step undoes; the
    lifecycle commits the verdict first, then unwinds them, last registered first."""

    def __init__(self) -> None:
        self._steps = contextlib.ExitStack()
        self.pending = False

    def hold(self, held: contextlib.AbstractContextManager[T]) -> T:
        """Enter `held` (a lock) now; it is given back as the last housekeeping step."""
        value = self._steps.enter_context(held)
        self.pending = True
        return value

    def then(self, step: Callable[..., Any], *args: Any) -> None:
        self._steps.callback(step, *args)
        self.pending = True

    def run(self) -> None:
        """Every step, even when one raises (its error is raised once all have run)."""
        self.pending = False
        self._steps.close()


@dataclass
class Run:
    """One run between its claim and its finished housekeeping."""

    request: Request
    result: RunResult
    marker: Marker | None = None
    # A rewarm's new last-known-good: its index entry is committed with the verdict.
    index: SnapshotIndex | None = None
    housekeeping: Housekeeping = field(default_factory=Housekeeping)


@dataclass(frozen=True)
class Publication:
    """What publishing a verdict did in the registry."""

    commit: str | None  # None: nothing committed (someone else had answered first)
    advanced: bool = False  # the canonical moved to the tested commit in that commit


class Sink(Protocol):
    """Hears of claims and verdicts once the registry has them. The registry commit is the
    truth and comes first; a sink that fails is logged and never undoes a verdict."""

    name: str

    def claimed(self, ctx: Context, run: Run) -> None: ...

    def published(self, ctx: Context, result: RunResult, request: Request | None,
                  publication: Publication) -> None: ...


@dataclass
class Context:
    registry: Registry
    settings: Settings
    state: StateDir
    progress: ProgressSink = field(default=_no_progress)
    sinks: list[Sink] = field(default_factory=list)  # beyond the built-in ones (see flows.runs)
    # This CI host's name in the fleet (--host, $CCCI_HOST, the hostname): in every claim and
    # result, and the folder of its snapshots in snapshots-index/. Independent of the engine.
    host: str = field(default_factory=names.host_name)

    @property
    def controller_id(self) -> str:
        """`<host>:<pid>`: the `controller` field of results."""
        return f"{self.host}:{os.getpid()}"

    @classmethod
    def open(cls, registry: Registry, state: StateDir, progress: ProgressSink | None = None, *,
             host: str | None = None) -> Context:
        settings = registry.settings()
        registry.identity = Identity.of(settings)
        return cls(registry=registry, settings=settings, state=state.ensure(),
                   progress=progress or _no_progress, host=names.host_name(host))

    def refresh_settings(self) -> None:
        self.settings = self.registry.settings()
        self.registry.identity = Identity.of(self.settings)


def open_context(registry_path: Path, state_dir: str | Path | None, *, sync: bool = False,
                 progress: ProgressSink | None = None, host: str | None = None) -> Context:
    """The context a command works in; `sync` fetches the remote before ccci.yaml is read (a fix
    pushed there must reach a clone whose copy is broken)."""
    registry = Registry(registry_path)
    if sync:
        registry.sync()
    return Context.open(registry, StateDir.from_env(state_dir), progress=progress, host=host)


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
