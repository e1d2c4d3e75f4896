"""The serve loop: watch the clone, fetch on an interval, claim requests, run them, commit."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from controller.flows import jobs, prune, recover, rewarm, runs
from controller.flows.context import Context, Run
from controller.flows.fleet import abandoned, keepers
from controller.flows.forge.service import Deliverer
from controller.registry import git as gitmod
from controller.registry.index import ResultsIndex
from controller.registry.store import DirtyClone, Registry
from controller.registry.watch import ChangeWatcher
from controller.util.alerts import clear_alert, raise_alert
from controller.util.errors import BadInput, CcciError, CheckFailed, ExternalError
from controller.util.files import atomic_write_json
from controller.util.log import run_context
from controller.util.paths import StateDir
from controller.util.systemd import Notifier
from controller.util.timeutil import now_iso, utcnow

log = logging.getLogger(__name__)

SETTINGS_ALERT = "settings"
CLONE_ALERT = "clone-dirty"
HOLD_ALERT = "claims-held"
SIGNAL_CHECK_S = 0.5  # how soon the waiting main loop notices a signal's flag
HOLD_INTERVAL_S = 30.0  # how often a serve that cannot read ccci.yaml at start fetches again


@dataclass
class ServeStats:
    passes: int = 0
    claimed: int = 0
    finished: int = 0
    rejected: int = 0
    started_at: str = field(default_factory=now_iso)


class Server:
    def __init__(self, ctx: Context, *, once: bool = False, poll_interval: float | None = None,
                 watch: bool = True, systemd: Notifier | None = None) -> None:
        self.ctx = ctx
        self.systemd = systemd or Notifier(None, None)  # readiness and watchdog, under systemd
        self.once = once
        self.poll_interval = poll_interval or ctx.settings.serve.poll_interval_s
        self.stats = ServeStats()
        self.watcher = ChangeWatcher(ctx.registry.root)
        self.watch = watch
        self.cold_slots = threading.BoundedSemaphore(ctx.settings.limits.max_parallel_cold)
        self.active: dict[str, threading.Thread] = {}
        self.active_lock = threading.Lock()
        self.stopping = False
        self.signalled: int | None = None  # SIGTERM or SIGINT, set by the handler
        self._signal_heard = False
        self.ledger = jobs.Ledger(ctx.state)
        self._heartbeat = ctx.state.heartbeat(os.getpid())
        self.fatal: CcciError | None = None  # what ends a --once serve that cannot go on
        self.claims_held: str | None = None  # why nothing new is claimed right now
        # Recipes with a quick run claimed here: the next waits for it unclaimed, so a claim's
        # deadline is never spent waiting for the app's lock.
        self.warm_busy: set[str] = set()
        self.results_index = ResultsIndex(ctx.registry, ctx.state.results_index(ctx.registry.root))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """Only raises flags. A handler runs between two bytecodes of the main thread, which
        may hold the log handler's or an Event's lock right then: logging or waking a waiter
        from here can deadlock the daemon (it did once, on SIGTERM). The main loop notices
        within SIGNAL_CHECK_S and says so."""
        if self.signalled is not None:
            os.write(2, b"ccci: second signal: exiting now; in-flight runs are recovered at next start\n")
            os._exit(130)
        self.signalled = signum
        self.stopping = True

    def _heed_signal(self) -> None:
        """Say once, from the main loop, that a signal asked us to stop."""
        if self.signalled is None or self._signal_heard:
            return
        self._signal_heard = True
        log.info("signal %d: finishing in-flight runs, claiming nothing new", self.signalled)
        self.systemd.stopping("stopping: finishing the runs in flight, claiming nothing new")

    def serve(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            # `kill -USR1 <pid>` prints every thread's stack: what is the daemon doing?
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.systemd.status("recovering what an earlier controller left behind")
        recover.recover_at_start(self.ctx)
        try:
            runs.consume_answered(self.ctx, self._index().refresh())
        except Exception as exc:  # housekeeping: never the daemon's end; the next start tries again
            log.warning("answered requests stay in requests/ for now: %s", getattr(exc, "message", exc))
        if self.watch:
            self.watcher.start()
        reports = Deliverer(self.ctx).start()  # verdicts to the forge, when one is configured
        self.systemd.ready(self._status_line())
        try:
            while True:
                pending = self._pass()
                if self.stopping:
                    self._heed_signal()
                    break
                self.systemd.status(self._status_line())
                if self.once and not pending and not self._active_count():
                    break
                self._wait_for_change()
            self._join_all()
        finally:
            self.watcher.stop()
            self._last_delivery(reports)
            reports.stop()
            self._heartbeat.unlink(missing_ok=True)
        log.info("serve stopped: %d claimed, %d finished, %d rejected",
                 self.stats.claimed, self.stats.finished, self.stats.rejected)
        if self.fatal is not None:
            raise self.fatal
        return 0

    def _wait_for_change(self) -> None:
        """Until the clone changes, a run ends or `poll_interval` passes; telling systemd's
        watchdog meanwhile that the loop is alive (a wedged loop is restarted)."""
        deadline = time.monotonic() + self.poll_interval
        while not self.stopping:
            self.systemd.keep_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.watcher.wait(min(remaining, self.systemd.ping_every, SIGNAL_CHECK_S)):
                return

    def _status_line(self) -> str:
        """What `systemctl status` shows."""
        with self.active_lock:
            active = sorted(key for key, thread in self.active.items() if thread.is_alive())
        line = (f"{self.stats.claimed} claimed, {self.stats.finished} finished, {self.stats.rejected} "
                f"rejected; running: {', '.join(active) or 'nothing'}")
        return f"{line}; holding claims: {self.claims_held}" if self.claims_held else line

    def _last_delivery(self, reports: Deliverer) -> None:
        """What the runs of this serve queued for the forge, once more before exiting (what the
        forge does not take stays queued for the next start)."""
        try:
            reports.deliver_now()
        except CcciError as exc:
            log.warning("forge reports stay queued: %s", exc.message)

    def _active_count(self) -> int:
        with self.active_lock:
            return sum(1 for t in self.active.values() if t.is_alive())

    def _join_all(self) -> None:
        while True:
            with self.active_lock:
                threads = [t for t in self.active.values() if t.is_alive()]
            if not threads:
                return
            self.systemd.keep_alive()  # draining is alive too: runs may take their time
            for thread in threads:
                thread.join(timeout=1.0)

    def _start(self, key: str, target: Callable[..., object], *args: object, claimed: bool = False) -> bool:
        """Run `target(*args)` in a thread known as `key`; False when `key` already runs or the
        daemon is stopping (a claimed run starts even then: it is ours to finish)."""
        with self.active_lock:
            if key in self.active or (self.stopping and not claimed):
                return False
            thread = threading.Thread(target=self._tracked, args=(key, target, *args), name=key, daemon=True)
            self.active[key] = thread
        thread.start()
        return True

    def _tracked(self, key: str, target: Callable[..., object], *args: object) -> None:
        try:
            target(*args)
        finally:
            with self.active_lock:
                self.active.pop(key, None)
            self.watcher.poke()

    def _write_heartbeat(self) -> None:
        pruned = self.ledger.entry("prune")
        atomic_write_json(self._heartbeat, {
            "pid": os.getpid(),
            "host": self.ctx.host,
            "registry": str(self.ctx.registry.root),
            "passes": self.stats.passes,
            "claimed": self.stats.claimed,
            "finished": self.stats.finished,
            "rejected": self.stats.rejected,
            "active": sorted(self.active),
            "git_operations": gitmod.operations_count(),
            "started_at": self.stats.started_at,
            "last_pass_at": now_iso(),
            "last_prune": pruned.get("summary") if pruned else None,
            "claims_held": self.claims_held,
        })

    def _pass(self) -> int:
        """Sync, then start what can start. Returns how many requests are still pending."""
        self.stats.passes += 1
        pending_count = 0
        try:
            self.ctx.registry.sync()
            try:
                self.ctx.refresh_settings()
            except BadInput as exc:
                # A bad ccci.yaml must not burn the queue: hold everything, say why, keep serving
                # (and fetching: the fix comes from the remote). --once cannot wait for it.
                raise_alert(self.ctx.state, SETTINGS_ALERT, exc.message)
                log.error("not dispatching: %s", exc.message)
                if self.once:
                    self.fatal, self.stopping = exc, True
                return 1
            clear_alert(self.ctx.state, SETTINGS_ALERT)
            clear_alert(self.ctx.state, CLONE_ALERT)
            self._run_due_jobs()
            self._fleet_duties()
            self.claims_held = self._disk_hold()
            pending_count += self._start_queued_rewarms()
            for name in self._pending():
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
                    runs.reject(self.ctx, name, CcciError(
                        f"requests/{name}: unexpected error in the controller while dispatching: "
                        f"{type(exc).__name__}: {exc}"), outcome="error")
            if self.claims_held and self.once and pending_count and not self._active_count():
                self.fatal = CheckFailed(f"{pending_count} requests wait, and serve --once cannot wait "
                                         f"for room: {self.claims_held}")
                self.stopping = True
        except DirtyClone as exc:
            raise_alert(self.ctx.state, CLONE_ALERT, exc.message)
            log.error("not dispatching: %s", exc.message)
            if self.once:
                self.fatal, self.stopping = exc, True
            pending_count += 1
        except CcciError as exc:
            log.warning("registry pass failed (will retry): %s", exc.message)
            pending_count += 1
        except Exception:
            log.exception("registry pass failed unexpectedly (will retry)")
            pending_count += 1
        finally:
            self._write_heartbeat()
        return pending_count

    def _pending(self) -> list[str]:
        """Requests without a result, from the results index (what changed since the last pass,
        not every request ever filed); each claim still checks the registry itself."""
        return self._index().refresh().pending

    def _index(self) -> ResultsIndex:
        return self.results_index

    def _fleet_duties(self) -> None:
        """What this host owes the fleet on each pass: rewarms of the recipes it keeps warm, and
        an `aborted` verdict for other hosts' runs left running past their deadline."""
        if self.stopping:
            return
        try:
            keepers.queue_owed_rewarms(self.ctx, self.results_index)
            abandoned.mark_abandoned(self.ctx, self.results_index)
        except CcciError as exc:
            log.warning("fleet duties skipped this pass: %s", exc.message)

    def _disk_hold(self) -> str | None:
        """Below limits.disk_min_free_gb nothing new is claimed (runs in flight finish): a run
        that fills the disk fails, and may take the warm data of others with it."""
        low = prune.disk_low(prune.free_space(self.ctx.state), self.ctx.settings.limits.disk_min_free_gb)
        if not low:
            clear_alert(self.ctx.state, HOLD_ALERT)
            return None
        reason = "disk low: " + "; ".join(low)
        raise_alert(self.ctx.state, HOLD_ALERT, f"claiming nothing new until there is room: {reason}")
        return reason

    def _run_due_jobs(self) -> None:
        now = utcnow()
        for job in jobs.JOBS:
            if self.stopping:
                return
            with self.active_lock:
                if job.name in self.active:
                    continue
            if not job.due(self.ctx, now, self.ledger.last_run(job.name), self.once):
                continue
            if job.background:
                self._start(job.name, jobs.run_job, self.ctx, job, self.ledger)
            else:
                jobs.run_job(self.ctx, job, self.ledger)

    def _start_queued_rewarms(self) -> int:
        """A thread per queued rewarm (the queue is files: a crash before it ran redoes it)."""
        queued = rewarm.queued_rewarms(self.ctx)
        for recipe in queued:
            self._start(f"rewarm:{recipe}", runs.perform_queued_rewarm, self.ctx, recipe)
        return len(queued)

    def _dispatch(self, name: str) -> bool:
        """Handle one pending request; False when it must wait for a later pass."""
        try:
            request, decision = runs.admit(self.ctx, name)
        except runs.Rejected as exc:
            if exc.committed:
                self.stats.rejected += 1
            return True
        except runs.NotPlacedHere as exc:
            log.debug("leaving %s: %s", name, exc.message)
            return not exc.waits_here  # another host's is not pending here
        if self.claims_held:
            return False  # answered later, once there is room on disk
        warm = request.recipe if decision.mode in recover.WARM_MODES else None
        if warm is not None:
            with self.active_lock:
                if warm in self.warm_busy or f"rewarm:{warm}" in self.active:
                    return False
                self.warm_busy.add(warm)
        # An upgrade run deploys throw-away apps as a cold run does: it takes a cold slot.
        slot = self.cold_slots if decision.mode in recover.THROWAWAY_MODES else None
        if slot is not None and not slot.acquire(blocking=False):
            return False
        try:
            with run_context(request.run_id):
                run = runs.claim(self.ctx, request, decision)
        except BaseException:
            self._release(slot, warm)
            raise
        if run is None:
            self._release(slot, warm)
            return True
        self.stats.claimed += 1
        self._start(name, self._run, run, slot, warm, claimed=True)
        return True

    def _release(self, slot: threading.BoundedSemaphore | None, warm: str | None) -> None:
        if slot is not None:
            slot.release()
        if warm is not None:
            with self.active_lock:
                self.warm_busy.discard(warm)

    def _run(self, run: Run, slot: threading.BoundedSemaphore | None, warm: str | None) -> None:
        try:
            runs.run_claimed(self.ctx, run)
            self.stats.finished += 1
        except CcciError as exc:
            log.error("could not commit the result of %s: %s", run.result.run, exc.message)
        finally:
            self._release(slot, warm)


def open_for_serve(registry_path: Path, state_dir: str | Path | None, *, once: bool,
                   poll_interval: float | None, systemd: Notifier | None = None,
                   host: str | None = None) -> Context:
    """Fetch first, then read ccci.yaml; while it is broken (or the clone cannot follow its
    remote), hold with an alert and fetch again, so the fix pushed to the remote is picked
    up — never a crash loop under systemd. --once says why and gives up.

    A hold tells systemd the service is ready, with the reason as its status: a broken
    ccci.yaml in the registry must not hang `systemctl start` (or a NixOS switch) or fail it."""
    systemd = systemd or Notifier(None, None)
    registry, state = Registry(registry_path), StateDir.from_env(state_dir).ensure()
    while True:
        try:
            try:
                registry.sync()
            except ExternalError as exc:  # the remote is down: start on what the clone has
                log.warning("cannot fetch the registry (will retry each pass): %s", exc.message)
            ctx = Context.open(registry, state, host=host)
        except BadInput as exc:
            raise_alert(state, CLONE_ALERT if isinstance(exc, DirtyClone) else SETTINGS_ALERT, exc.message)
            if once:
                raise
            log.error("serve is holding: %s (fetching again in %.0f s)", exc.message,
                      poll_interval or HOLD_INTERVAL_S)
            systemd.ready(f"holding: {exc.message}")
            _sleep_alive(systemd, poll_interval or HOLD_INTERVAL_S)
            continue
        clear_alert(state, SETTINGS_ALERT)
        clear_alert(state, CLONE_ALERT)
        return ctx


def _sleep_alive(systemd: Notifier, seconds: float) -> None:
    """Sleep, pinging the watchdog as often as it needs."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        systemd.keep_alive()
        time.sleep(min(remaining, systemd.ping_every))


def run_until_idle(ctx: Context, *, poll_interval: float = 0.5) -> None:
    """Drain the queue in-process (tests, demo)."""
    Server(ctx, once=True, poll_interval=poll_interval).serve()
