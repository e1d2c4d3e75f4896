"""Reaching a deployed app: free host ports, the HTTP probe, and the recipe's custom assert."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from controller.util.timeutil import Deadline

log = logging.getLogger(__name__)

PORT_RANGE = (20000, 29999)


def free_port(taken: set[int] | None = None) -> int:
    """A TCP port nobody listens on now, from the controller's range."""
    taken = taken or set()
    start = PORT_RANGE[0] + (os.getpid() * 7919 + int(time.monotonic() * 1000)) % (PORT_RANGE[1] - PORT_RANGE[0])
    for offset in range(PORT_RANGE[1] - PORT_RANGE[0]):
        port = PORT_RANGE[0] + (start - PORT_RANGE[0] + offset) % (PORT_RANGE[1] - PORT_RANGE[0])
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in the controller's range")


@dataclass(frozen=True)
class HttpAnswer:
    ok: bool
    status: int | None
    detail: str


def http_get(port: int, path: str, *, timeout: float = 5.0) -> HttpAnswer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "127.0.0.1", "User-Agent": "ccci-probe"})
        response = conn.getresponse()
        response.read(65536)
        ok = response.status < 500
        return HttpAnswer(ok, response.status, f"GET {path} → {response.status}")
    except (OSError, http.client.HTTPException) as exc:
        return HttpAnswer(False, None, f"GET {path} → {type(exc).__name__}: {exc}")
    finally:
        conn.close()


def probe_http(port: int, path: str, deadline: Deadline, *, settle_s: float = 30.0) -> HttpAnswer:
    """Poll until the app answers without a server error, or `settle_s`/the deadline passes."""
    local = Deadline(min(settle_s, deadline.remaining()))
    answer = http_get(port, path)
    while not answer.ok and not local.expired():
        time.sleep(0.3)
        answer = http_get(port, path)
    return answer


@dataclass(frozen=True)
class AssertRun:
    ran: bool
    ok: bool
    exit_code: int | None
    output: str
    seconds: float


def run_custom_assert(checkout: Path, rel: str, env: dict[str, str], *, timeout: float) -> AssertRun:
    """Run the recipe's assert executable; exit 0 passes. Absent: not run."""
    path = (checkout / rel).resolve()
    if not path.is_relative_to(checkout.resolve()) or not path.is_file():
        return AssertRun(False, True, None, f"{rel} not present", 0.0)
    with contextlib.suppress(OSError):
        path.chmod(path.stat().st_mode | 0o100)
    full_env = {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR") if k in os.environ}
    full_env.update(env)
    started = time.monotonic()
    try:
        proc = subprocess.run([str(path)], cwd=checkout, env=full_env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        return AssertRun(True, False, None, f"timed out after {timeout:.0f} s: {out[-1500:]}",
                         time.monotonic() - started)
    except OSError as exc:
        return AssertRun(True, False, None, f"could not execute {rel}: {exc}", time.monotonic() - started)
    output = (proc.stdout + proc.stderr).strip()
    return AssertRun(True, proc.returncode == 0, proc.returncode, output[-2000:],
                     time.monotonic() - started)
