"""Logging set-up: run-id context, secret masking, plain or JSON lines, journal priorities."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_run_id: contextvars.ContextVar[str] = contextvars.ContextVar("ccci_run_id", default="-")
# Longest first. Replaced whole under the lock, read without it: `mask` runs inside every log
# call, and a log call can run inside a signal handler that interrupted another log call.
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()
MASK = "*****"


def register_secret(value: str) -> None:
    """Mask `value` in every log line from now on (short values would mask too much)."""
    global _secrets
    if value and len(value) >= 4:
        with _secrets_lock:
            if value not in _secrets:
                _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


def mask(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


@contextlib.contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """Every log line inside carries `run_id`."""
    token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run = _run_id.get()
        return True


class _MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "run": getattr(record, "run", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return mask(json.dumps(doc))


# syslog(3) priorities (crit, err, warning, info; below: debug), which journald reads from a
# `<N>` prefix on each line of stderr.
_JOURNAL_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_TEXT_FORMAT = "%(asctime)s %(levelname)s [%(run)s] %(name)s: %(message)s"
_JOURNAL_TEXT_FORMAT = "[%(run)s] %(name)s: %(message)s"  # the journal keeps time and priority


class _JournalFormatter(logging.Formatter):
    """Every line of a record (a traceback too) with the record's priority, so
    `journalctl -p warning` finds it."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _JOURNAL_PRIORITIES if record.levelno >= level), 7)
        return "\n".join(f"<{priority}>{line}" for line in self.inner.format(record).splitlines())


def setup_logging(*, level: str = "INFO", json_lines: bool = False, log_file: Path | None = None,
                  journal: bool = False) -> None:
    """Configure handlers once, at the entry point. `journal`: stderr is the journal, which is
    then the one log (give no `log_file`): lines carry their priority and no time stamp."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level.upper())
    text_format = _JOURNAL_TEXT_FORMAT if journal else _TEXT_FORMAT
    fmt: logging.Formatter = _JsonFormatter() if json_lines else _MaskingFormatter(text_format)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(_JournalFormatter(fmt) if journal else fmt)
    stream.addFilter(_ContextFilter())
    root.addHandler(stream)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # Several ccci processes append to one file; an operator's logrotate moves it away and
        # each of them reopens it on its next line.
        file_handler = logging.handlers.WatchedFileHandler(log_file)
        file_handler.setFormatter(_JsonFormatter() if json_lines else _MaskingFormatter(_TEXT_FORMAT))
        file_handler.addFilter(_ContextFilter())
        root.addHandler(file_handler)
    # Third-party chatter stays out of the daemon's log unless asked for.
    for noisy in ("urllib3", "docker", "git", "watchdog", "keycloak", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
