"""The one place that runs external commands: logs them masked, raises with what they said."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.util.errors import ExternalError
from controller.util.log import mask

log = logging.getLogger(__name__)


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    input_text: str | None = None,
    check: bool = True,
    temporary: bool = False,
    clean_env: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `argv`, capture output; raise ExternalError on non-zero exit when `check`.

    `clean_env`: the child sees only `env` (a stack's env must not pick up the controller's).
    """
    shown = mask(" ".join(argv))
    log.debug("run: %s", shown)
    full_env = {} if clean_env else dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ExternalError(
            f"`{shown}` did not finish within {timeout:.0f} s",
            command=shown,
            temporary=True,
            cause="timeout",
        ) from exc
    except FileNotFoundError as exc:
        raise ExternalError(f"`{argv[0]}` is not installed", command=shown) from exc
    if check and proc.returncode != 0:
        stderr = mask(proc.stderr.strip())
        raise ExternalError(
            f"`{shown}` failed with exit status {proc.returncode}: {stderr[-2000:]}",
            command=shown,
            returncode=proc.returncode,
            stderr=stderr,
            temporary=temporary,
        )
    return proc
