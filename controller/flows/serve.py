"""The serve loop: watch the clone, fetch on an interval, claim requests, run them, commit."""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from controller.flows import dispatch, prune, recover, rewarm, sweep
from controller.flows.canonical import finish_run
from controller.flows.context import Context
from controller.registry import git as gitmod
from controller.registry.documents import Request
from controller.registry.results import RunResult
from controller.registry.watch import ChangeWatcher
from controller.util import inflight
from controller.util.alerts import clear_alert
from controller.util.errors import BadInput, CcciError
from controller.util.log import run_context
from controller.util.timeutil import now_iso, utcnow

log = logging.getLogger(__name__)


@dataclass
class ServeStats:
    passes: int = 0
    claimed: int = 0
    finished: int = 0
    rejected: int = 0
    started_at: str = field(default_factory=now_iso)


class Server:
    def __init__(self, ctx: Context, *, once: bool = False, poll_interval: float | None = None,
                 watch: bool = True) -> None:
        self.ctx = ctx
        self.once = once
        self.poll_interval = poll_interval or ctx.settings.serve.poll_interval_s
        self.stats = ServeStats()
        self.watcher = ChangeWatcher(ctx.registry.root)
        self.watch = watch
        self.cold_slots = threading.BoundedSemaphore(ctx.settings.limits.max_parallel_cold)
        self.active: dict[str, threading.Thread] = {}
        self.active_lock = threading.Lock()
        self.stopping = False
        self._heartbeat = ctx.state.root / "serve" / f"{os.getpid()}.json"
        self._last_prune: float | None = None
        self._last_prune_summary: dict[str, object] | None = None

    # -- life cycle ------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            log.warning("second signal: exiting now; in-flight runs are recovered at next start")
            os._exit(130)
        log.info("signal %d: finishing in-flight runs, claiming nothing new", signum)
        self.stopping = True
        self.watcher.poke()

    def serve(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            # `kill -USR1 <pid>` prints every thread's stack: what is the daemon doing?
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        recover.recover_at_start(self.ctx)
        if self.watch:
            self.watcher.start()
        try:
            while True:
                pending = self._pass()
                if self.stopping:
                    break
                if self.once and not pending and not self._active_count():
                    break
                self.watcher.wait(self.poll_interval)
            self._join_all()
        finally:
            self.watcher.stop()
            self._heartbeat.unlink(missing_ok=True)
        log.info("serve stopped: %d claimed, %d finished, %d rejected",
                 self.stats.claimed, self.stats.finished, self.stats.rejected)
        return 0

    def _active_count(self) -> int:
        with self.active_lock:
            return sum(1 for t in self.active.values() if t.is_alive())

    def _join_all(self) -> None:
        while True:
            with self.active_lock:
                threads = [t for t in self.active.values() if t.is_alive()]
            if not threads:
                return
            for thread in threads:
                thread.join(timeout=1.0)

    def _write_heartbeat(self) -> None:
        self._heartbeat.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "pid": os.getpid(),
            "registry": str(self.ctx.registry.root),
            "passes": self.stats.passes,
            "claimed": self.stats.claimed,
            "finished": self.stats.finished,
            "rejected": self.stats.rejected,
            "active": sorted(self.active),
            "git_operations": gitmod.operations_count(),
            "started_at": self.stats.started_at,
            "last_pass_at": now_iso(),
            "last_prune": self._last_prune_summary,
        }
        tmp = self._heartbeat.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, sort_keys=True))
        os.replace(tmp, self._heartbeat)

    # -- one pass --------------------------------------------------------------------------

    def _pass(self) -> int:
        """Sync, then start what can start. Returns how many requests are still pending."""
        self.stats.passes += 1
        pending_count = 0
        try:
            self.ctx.registry.sync()
            try:
                self.ctx.refresh_settings()
            except BadInput as exc:
                # A bad ccci.yaml must not burn the queue: hold everything, say why, keep serving.
                recover.raise_alert(self.ctx.state, "settings", exc.message)
                log.error("not dispatching: %s", exc.message)
                return 1
            clear_alert(self.ctx.state, "settings")
            self._start_sweep_if_due()
            self._prune_if_due()
            pending_count += self._start_queued_rewarms()
            for name in self.ctx.registry.pending_request_names():
                with self.active_lock:
                    if name in self.active:
                        continue
                if self.stopping:
                    pending_count += 1
                    continue
                try:
                    if not self._dispatch(name):
                        pending_count += 1
                except CcciError:
                    raise
                except Exception as exc:  # a bug must cost one request, never the daemon
                    log.exception("unexpected error dispatching %s", name)
                    dispatch.reject(self.ctx, name, CcciError(
                        f"requests/{name}: unexpected error in the controller while dispatching: "
                        f"{type(exc).__name__}: {exc}"), outcome="error")
        except CcciError as exc:
            log.warning("registry pass failed (will retry): %s", exc.message)
            pending_count += 1
        except Exception:
            log.exception("registry pass failed unexpectedly (will retry)")
            pending_count += 1
        finally:
            self._write_heartbeat()
        return pending_count

    def _prune_if_due(self) -> None:
        """Every `limits.prune_interval_s` (not with --once), and whenever the disk is low
        (at most once a minute): prune what no run, warm app or live infra needs."""
        settings = self.ctx.settings
        now = time.monotonic()
        since = now - self._last_prune if self._last_prune is not None else None
        if since is not None and since < 60:
            return
        due = not self.once and (since is None or since >= settings.limits.prune_interval_s)
        policy = prune.policy_from_settings(settings)
        try:
            report = prune.prune_for_serve(self.ctx.state, policy, force=due)
            if report is not None:
                self._last_prune = now
                self._last_prune_summary = {
                    "at": now_iso(), "removed": sum(1 for i in report.removed if i.removed),
                    "failed": len(report.failed), "skipped": report.skipped}
        except CcciError as exc:
            log.warning("prune failed (will retry): %s", exc.message)
            self._last_prune = now

    def _start_sweep_if_due(self) -> None:
        settings = self.ctx.settings
        if self.once or self.stopping:
            return  # --once drains the queue; it does not start the nightly sweep
        with self.active_lock:
            if "sweep" in self.active:
                return
            if not sweep.sweep_due(utcnow(), sweep.last_sweep(self.ctx), settings.sweep.at,
                                   settings.sweep.timezone):
                return
            thread = threading.Thread(target=self._sweep, name="sweep", daemon=True)
            self.active["sweep"] = thread
        thread.start()

    def _sweep(self) -> None:
        try:
            sweep.run_sweep(self.ctx)
        except CcciError as exc:
            log.error("sweep failed: %s", exc.message)
        finally:
            with self.active_lock:
                self.active.pop("sweep", None)
            self.watcher.poke()

    def _start_queued_rewarms(self) -> int:
        """Start a thread per queued rewarm (a file survives a crash: the next start redoes it)."""
        queued = recover.queued_rewarms(self.ctx)
        for recipe in queued:
            key = f"rewarm:{recipe}"
            with self.active_lock:
                if key in self.active or self.stopping:
                    continue
                thread = threading.Thread(target=self._rewarm, args=(key, recipe), name=key, daemon=True)
                self.active[key] = thread
            thread.start()
        return len(queued)

    def _rewarm(self, key: str, recipe: str) -> None:
        try:
            result = rewarm.rewarm(self.ctx, recipe)
            log.info("rewarm of %s: %s", recipe, result.outcome)
        except CcciError as exc:
            log.error("rewarm of %s could not run: %s", recipe, exc.message)
        finally:
            recover.dequeue_rewarm(self.ctx, recipe)
            with self.active_lock:
                self.active.pop(key, None)
            self.watcher.poke()

    def _dispatch(self, name: str) -> bool:
        """Handle one pending request; False when it must wait for a later pass."""
        request: Request | None = None
        try:
            request = self.ctx.registry.read_request(name)
            decision = dispatch.decide(self.ctx, request)
        except BadInput as exc:
            if dispatch.reject(self.ctx, name, exc, request):
                self.stats.rejected += 1
            return True
        slot = None
        if decision.mode == "cold":
            if not self.cold_slots.acquire(blocking=False):
                return False
            slot = self.cold_slots
        try:
            result = dispatch.new_result(self.ctx, request, decision)
            with run_context(request.run_id):
                marker = inflight.begin(self.ctx.state, request.run_id, mode=decision.mode,
                                        recipe=request.recipe,
                                        registry=str(self.ctx.registry.root))
                try:
                    claimed = self.ctx.registry.claim(result)
                except BaseException:
                    marker.end()
                    raise
                if not claimed:
                    marker.end()
                    if slot:
                        slot.release()
                    return True
                marker.update(claimed=True)
                log.info("claimed %s (%s)", request.run_id, decision.mode)
        except BaseException:
            if slot:
                slot.release()
            raise
        self.stats.claimed += 1
        thread = threading.Thread(
            target=self._run, args=(name, request, result, marker, slot),
            name=request.run_id, daemon=True,
        )
        with self.active_lock:
            self.active[name] = thread
        thread.start()
        return True

    def _run(self, name: str, request: Request, result: RunResult, marker: inflight.Marker,
             slot: threading.BoundedSemaphore | None) -> None:
        committed = False
        try:
            with run_context(request.run_id):
                dispatch.run_claimed(self.ctx, request, result)
                try:
                    advanced = finish_run(self.ctx, request, result)
                    committed = True
                except CcciError as exc:
                    log.error("could not commit the result of %s: %s", request.run_id, exc.message)
                    return
                self.stats.finished += 1
                log.info("finished %s: %s", request.run_id, result.outcome)
                if advanced:
                    recover.queue_rewarm(self.ctx, request.recipe)
        finally:
            # An uncommitted verdict keeps its marker: the next start-up aborts it properly.
            marker.end(keep=not committed)
            if slot is not None:
                slot.release()
            with self.active_lock:
                self.active.pop(name, None)
            self.watcher.poke()


def run_until_idle(ctx: Context, *, poll_interval: float = 0.5) -> None:
    """Drain the queue in-process (tests, demo)."""
    Server(ctx, once=True, poll_interval=poll_interval).serve()

