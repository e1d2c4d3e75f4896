"""The forge's long-running parts: the thread that delivers queued reports, the webhook receiver
and the poller (`ccci forge webhook | poll`), each filing through `intake`."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from controller.flows.context import Context
from controller.flows.forge import outbox
from controller.flows.forge.connect import forge_client, forge_repos, webhook_secret
from controller.flows.forge.intake import Intake, handle_comment
from controller.forge import Answer, CommentEvent, ForgeClient, make_server, webhook_app
from controller.util.errors import CcciError
from controller.util.files import atomic_write_json, read_json
from controller.util.timeutil import iso, parse_iso, utcnow

log = logging.getLogger(__name__)

RETRY_TICK_S = 5.0
# A repository's first poll marks what it has seen this far back (the forge's clock may differ).
FIRST_LOOK_BACK = dt.timedelta(minutes=1)  # how often queued reports that wait out a back-off are looked at


class Deliverer:
    """Delivers the outbox in a thread: at once when a report is queued, and every few seconds
    for those waiting out a back-off. Makes its client from the settings it is given."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: ForgeClient | None = None
        self._client_for: tuple[str | None, str | None] | None = None
        self._last_error: str | None = None

    def _current_client(self) -> ForgeClient | None:
        forge = self.ctx.settings.forge
        if not forge.enabled:
            return None
        wanted = (forge.url, forge.token_file)
        if self._client is None or self._client_for != wanted:
            if self._client is not None:
                self._client.close()
            self._client, self._client_for = forge_client(self.ctx.settings), wanted
        return self._client

    def deliver_now(self) -> outbox.DrainReport:
        client = self._current_client()
        if client is None:
            return outbox.DrainReport()
        return outbox.drain(self.ctx.state, client)

    def start(self) -> Deliverer:
        self._thread = threading.Thread(target=self._loop, name="forge-reporter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        outbox.QUEUED.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._client is not None:
            self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            outbox.QUEUED.wait(RETRY_TICK_S)
            outbox.QUEUED.clear()
            if self._stop.is_set():
                return
            try:
                self.deliver_now()
                self._last_error = None
            except CcciError as exc:
                if exc.message != self._last_error:  # once per cause, not every tick
                    log.error("forge reports not delivered: %s", exc.message)
                self._last_error = exc.message
            except Exception:  # the thread must outlive any one bad report
                log.exception("forge reports: unexpected error (will retry)")


@dataclass
class Intakes:
    """Counts for the log and the tests."""

    by_outcome: dict[str, int] = field(default_factory=dict)

    def add(self, intake: Intake) -> Intake:
        self.by_outcome[intake.outcome] = self.by_outcome.get(intake.outcome, 0) + 1
        return intake


def _refresh(ctx: Context) -> None:
    """Settings as the remote has them (a new recipe's forge_repo counts at once)."""
    ctx.registry.sync()
    ctx.refresh_settings()


def serve_webhook(ctx: Context, host: str, port: int, *, ready: threading.Event | None = None,
                  bound: list[int] | None = None) -> int:
    """`ccci forge webhook`: answer deliveries until SIGTERM/SIGINT; reports go out meanwhile."""
    _refresh(ctx)
    client = forge_client(ctx.settings)
    bot = client.whoami()
    counts = Intakes()
    lock = threading.Lock()  # one comment at a time: each is a registry commit anyway

    def handle(event: CommentEvent) -> Answer:
        with lock:
            _refresh(ctx)
            intake = counts.add(handle_comment(ctx, client, bot, event))
        status = 200 if intake.outcome in ("filed", "duplicate") else 202
        return Answer(status, f"{intake.outcome}: {intake.detail}")

    server = make_server(webhook_app(webhook_secret(ctx.settings), handle), host, port)
    deliverer = Deliverer(ctx).start()
    actual = int(getattr(server, "effective_port", port))
    if bound is not None:
        bound.append(actual)
    log.info("forge webhook listening on %s:%d as %s", host, actual, bot)

    def stop(_signum: int, _frame: Any) -> None:
        server.close()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    if ready is not None:
        ready.set()
    try:
        server.run()
    except (OSError, ValueError):
        pass  # closed by a signal while waiting
    finally:
        deliverer.stop()
        client.close()
    log.info("forge webhook stopped: %s", counts.by_outcome)
    return 0


class Cursor:
    """Per repository: comments created before `since` were seen; `ids` were seen at `since`."""

    def __init__(self, ctx: Context) -> None:
        self.path = ctx.state.forge_cursor
        doc = read_json(self.path, {})
        self.doc: dict[str, Any] = doc if isinstance(doc, dict) else {}

    def since(self, repo: str) -> str | None:
        entry = self.doc.get(repo.casefold())
        return str(entry["since"]) if isinstance(entry, dict) and entry.get("since") else None

    def seen(self, repo: str) -> set[int]:
        entry = self.doc.get(repo.casefold())
        return set(entry.get("ids") or []) if isinstance(entry, dict) else set()

    def advance(self, repo: str, since: str, ids: set[int]) -> None:
        self.doc[repo.casefold()] = {"since": since, "ids": sorted(ids)}
        atomic_write_json(self.path, self.doc)


def _moment(text: str) -> dt.datetime:
    try:
        return parse_iso(text).astimezone(dt.UTC)
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)


def poll_once(ctx: Context, client: ForgeClient, bot: str, cursor: Cursor) -> Intakes:
    """Every comment created since the cursor on every recipe's repository, oldest first. A
    repository polled for the first time starts from what it has: those comments are marked
    seen, not filed (history is not replayed)."""
    _refresh(ctx)
    counts = Intakes()
    for repo in forge_repos(ctx.settings):
        since = cursor.since(repo)
        if since is None:
            start = iso(utcnow() - FIRST_LOOK_BACK)
            existing = client.comments_since(repo, start)
            newest = max((c.created_at for c in existing), key=_moment, default=start)
            cursor.advance(repo, newest, {c.id for c in existing})
            continue
        seen = cursor.seen(repo)
        newest, newest_ids = since, set(seen)
        comments = sorted(client.comments_since(repo, since), key=lambda c: (_moment(c.created_at), c.id))
        for comment in comments:
            # `since` filters by update time: an older comment edited since is not new.
            if _moment(comment.created_at) < _moment(since) or comment.id in seen or comment.number is None:
                continue
            event = CommentEvent(repo=repo, number=comment.number, on_pull=comment.on_pull,
                                 action="created", comment_id=comment.id, body=comment.body,
                                 login=comment.login, created_at=comment.created_at)
            counts.add(handle_comment(ctx, client, bot, event))
            if _moment(comment.created_at) > _moment(newest):
                newest, newest_ids = comment.created_at, {comment.id}
            else:
                newest_ids.add(comment.id)
            cursor.advance(repo, newest, newest_ids)  # after each: a crash re-reads one at most
    return counts


def run_poller(ctx: Context, *, once: bool, interval: float | None) -> int:
    """`ccci forge poll`: poll until SIGTERM/SIGINT (or once)."""
    _refresh(ctx)
    client = forge_client(ctx.settings)
    bot = client.whoami()
    cursor = Cursor(ctx)
    stopping: list[int] = []  # a flag only: an Event's set() from a handler can deadlock its wait()

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    deliverer = Deliverer(ctx)
    if not once:
        deliverer.start()
    try:
        while True:
            try:
                counts = poll_once(ctx, client, bot, cursor)
                if counts.by_outcome:
                    log.info("forge poll: %s", counts.by_outcome)
            except CcciError as exc:
                if once:
                    raise
                log.warning("forge poll failed (will retry): %s", exc.message)
            if once:
                deliverer.deliver_now()
                return 0
            if _sleep_unless(stopping, interval or ctx.settings.forge.poll_interval_s):
                return 0
    finally:
        deliverer.stop()
        client.close()


def _sleep_unless(stopping: list[int], seconds: float) -> bool:
    """Sleep `seconds`, in half-second steps; True as soon as a signal has asked to stop."""
    deadline = time.monotonic() + seconds
    while not stopping and (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.5))
    return bool(stopping)
