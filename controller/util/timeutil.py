"""UTC time helpers and run ids."""

from __future__ import annotations

import datetime as dt
import secrets
import time


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(moment: dt.datetime) -> str:
    """ISO 8601 with a Z suffix, second precision."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_iso() -> str:
    return iso(utcnow())


def now_iso_ms() -> str:
    """Millisecond precision, for ordering events within one second (lock hand-overs)."""
    moment = dt.datetime.now(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_run_id(recipe: str, moment: dt.datetime | None = None) -> str:
    """`<UTC yyyymmddThhmmss>-<recipe>-<6 hex>`: unique, sortable, safe as a file name."""
    moment = moment or utcnow()
    return f"{moment.astimezone(dt.UTC):%Y%m%dT%H%M%S}-{recipe}-{secrets.token_hex(3)}"


class Deadline:
    """A point in monotonic time; `remaining()` never goes below zero."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end
