"""The one git runner: every git command the controller issues goes through here.

GitPython leaks `git cat-file` helpers in long-running processes unless each `Repo` is
closed, so every call opens one `Repo` with `with` and uses `repo.git.*` only.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import git as gitpython
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from controller.util.errors import BadInput, ExternalError
from controller.util.log import mask

log = logging.getLogger(__name__)

_ops_lock = threading.Lock()
_ops = 0

_REJECTED_MARKERS = ("[rejected]", "non-fast-forward", "fetch first", "failed to update ref",
                     "cannot lock ref", "stale info", "remote rejected")
_TEMPORARY_MARKERS = ("could not read from remote", "connection", "timed out", "unable to access",
                      "index.lock", "could not lock")


def operations_count() -> int:
    """How many git commands this process has run (the leak test reads it)."""
    return _ops


def _count() -> None:
    global _ops
    with _ops_lock:
        _ops += 1


class PushRejected(ExternalError):
    """The remote moved first: temporary by nature (a fetch and a fresh attempt get past it),
    whatever the words of git's message."""

    def __init__(self, message: str, *, command: str = "", returncode: int | None = None,
                 stderr: str = "") -> None:
        super().__init__(message, command=command, returncode=returncode, stderr=stderr, temporary=True)


def identity_env(name: str, email: str) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def git(path: Path, *args: str, env: Mapping[str, str] | None = None, strip: bool = True,
        stdin: bytes | None = None) -> str:
    """Run `git <args>` in the repository at `path` (fed `stdin`) and return its stdout."""
    _count()
    shown = mask("git " + " ".join(args))
    log.debug("%s (in %s)", shown, path)
    try:
        with contextlib.ExitStack() as stack:
            repo = stack.enter_context(gitpython.Repo(path))
            feed = None
            if stdin is not None:
                feed = stack.enter_context(tempfile.TemporaryFile())
                feed.write(stdin)
                feed.seek(0)
            runner = repo.git
            extra = dict(env or {})
            extra.setdefault("GIT_TERMINAL_PROMPT", "0")
            with runner.custom_environment(**extra):
                out = runner.execute(["git", *args], strip_newline_in_stdout=strip,
                                     istream=feed)
    except (InvalidGitRepositoryError, NoSuchPathError) as exc:
        raise BadInput(f"{path} is not a git repository") from exc
    except GitCommandError as exc:
        stderr = mask(str(exc.stderr or "").strip())
        message = f"`{shown}` failed with exit status {exc.status}: {stderr[-1500:]}"
        returncode = exc.status if isinstance(exc.status, int) else None
        if args and args[0] == "push" and any(m in stderr for m in _REJECTED_MARKERS):
            raise PushRejected(message, command=shown, returncode=returncode, stderr=stderr) from exc
        raise ExternalError(message, command=shown, returncode=returncode, stderr=stderr,
                            temporary=any(m in stderr.lower() for m in _TEMPORARY_MARKERS)) from exc
    return str(out)


def git_plain(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run git where there is no repository yet (init, clone, ls-remote)."""
    _count()
    shown = mask("git " + " ".join(args))
    log.debug("%s", shown)
    runner = gitpython.Git(str(cwd) if cwd else None)
    extra = dict(env or {})
    extra.setdefault("GIT_TERMINAL_PROMPT", "0")
    try:
        with runner.custom_environment(**extra):
            return str(runner.execute(["git", *args]))
    except GitCommandError as exc:
        stderr = mask(str(exc.stderr or "").strip())
        raise ExternalError(
            f"`{shown}` failed with exit status {exc.status}: {stderr[-1500:]}",
            command=shown,
            returncode=exc.status if isinstance(exc.status, int) else None,
            stderr=stderr,
            temporary=any(m in stderr.lower() for m in _TEMPORARY_MARKERS),
        ) from exc


def is_ancestor(path: Path, older: str, newer: str) -> bool:
    try:
        git(path, "merge-base", "--is-ancestor", older, newer)
    except ExternalError as exc:
        if exc.returncode == 1:
            return False
        raise
    return True



ObjectReader = Callable[[str, int], "bytes | None"]


@contextlib.contextmanager
def object_reader(path: Path) -> Iterator[ObjectReader]:
    """Read many objects (`<commit>:<path>`) through one `git cat-file --batch` kept open for
    the block, closed with its `Repo`. `read(spec, max_bytes)` gives None when the object is
    missing or larger than `max_bytes` (its header is read first; its data only when it fits)."""
    with gitpython.Repo(path) as repo:
        def read(spec: str, max_bytes: int) -> bytes | None:
            _count()
            try:
                _sha, _kind, size = repo.git.get_object_header(spec)
                if size > max_bytes:
                    return None
                return bytes(repo.git.get_object_data(spec)[3])
            except (ValueError, GitCommandError):
                return None
        yield read
