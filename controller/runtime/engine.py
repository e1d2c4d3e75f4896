"""The one docker client: every SDK call goes through `call`, which logs and classifies errors."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from controller.util.errors import ExternalError

log = logging.getLogger(__name__)
T = TypeVar("T")

_client: Any = None
_client_lock = threading.Lock()


def client() -> Any:
    """A shared SDK client for `DOCKER_HOST` (thread-safe for our use: one HTTP pool)."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                _client = docker.from_env(timeout=120)
                _client.ping()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                _client = None
                raise ExternalError(
                    f"cannot reach the Docker engine at {os.environ.get('DOCKER_HOST', 'the default socket')}: {exc}",
                    temporary=True,
                ) from exc
        return _client




def call(what: str, fn: Callable[[], T], *, missing_ok: bool = False) -> T | None:
    """Run one SDK operation; NotFound is None when `missing_ok`, else an ExternalError."""
    try:
        return fn()
    except docker.errors.NotFound:
        if missing_ok:
            return None
        raise ExternalError(f"docker: {what}: not found") from None
    except docker.errors.APIError as exc:
        status = exc.status_code or 0
        explanation = str(getattr(exc, "explanation", "") or exc)
        raise ExternalError(
            f"docker: {what} failed ({status}): {explanation}",
            command=what,
            returncode=status,
            stderr=explanation,
            temporary=status >= 500 or status == 409,
        ) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise ExternalError(f"docker: {what} failed: {exc}", command=what, temporary=True) from exc




def data_root() -> str:
    info = call("info", lambda: client().info())
    assert info is not None
    return str(info.get("DockerRootDir", "/var/lib/docker"))


def node_id() -> str | None:
    """The swarm node id of this engine (None outside a swarm): where warm apps are pinned."""
    info = call("info", lambda: client().info())
    assert info is not None
    return str((info.get("Swarm") or {}).get("NodeID") or "") or None
