"""Talking to systemd: readiness, status and the watchdog (sd_notify), and whether stderr is the journal."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys

log = logging.getLogger(__name__)

# What systemd hands a service (systemd.exec(5)); read once, then taken out of the environment
# so no child (git, a hook) answers for us.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def notify_address(value: str) -> str | None:
    """The datagram socket `$NOTIFY_SOCKET` names: a path, or `@name` in the abstract namespace;
    anything else (vsock) is not spoken here."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """The watchdog interval systemd expects pings within, or None when there is none for us
    (`WATCHDOG_PID` names another process: the variables were inherited, not meant for us)."""
    if pid and pid != str(own_pid):
        return None
    try:
        value = int(usec or "")
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Notifier:
    """The service manager's end of `$NOTIFY_SOCKET`; every call is a no-op outside systemd
    (no socket), and a failed send is logged, never raised: the daemon's work comes first."""

    def __init__(self, address: str | None, watchdog_s: float | None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s
        self._status: str | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        values = {name: os.environ.pop(name, None) for name in NOTIFY_VARIABLES}
        address = notify_address(values["NOTIFY_SOCKET"] or "")
        if address is None:
            return cls(None, None)
        return cls(address, watchdog_seconds(values["WATCHDOG_USEC"], values["WATCHDOG_PID"], os.getpid()))

    @property
    def ping_every(self) -> float:
        """How long the main loop may go without a ping: a quarter of the watchdog interval, so
        a ping lands at least twice per interval even when a pass takes a while."""
        return self.watchdog_s / 4 if self.watchdog_s else math.inf

    def send(self, *fields: str) -> None:
        if self.address is None or not fields:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", " ".join(fields), exc)

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        """STATUS= (what `systemctl status` shows), sent only when it changed."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def stopping(self, status: str) -> None:
        self._status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def keep_alive(self) -> None:
        if self.watchdog_s:
            self.send("WATCHDOG=1")


def stderr_is_journal() -> bool:
    """Whether stderr is connected to the journal: `$JOURNAL_STREAM` is the device and inode of
    the stream systemd connected, and matches only while nobody redirected stderr since."""
    device, sep, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False
