"""The project's own exceptions; the CLI maps them to exit codes."""

from __future__ import annotations


class CcciError(Exception):
    """An expected failure with a sentence a user can act on."""

    exit_code = 1

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The cause class a run reports when this error ends it: recipe, infra or timeout.
        self.cause = cause


class BadInput(CcciError):
    """Bad usage or bad input: exit code 2, a `rejected` result."""

    exit_code = 2


class CheckFailed(CcciError):
    """A check or run failed: exit code 1."""

    exit_code = 1


class ExternalError(CcciError):
    """An external command or API failed; carries what was run and what it said."""

    def __init__(
        self,
        message: str,
        *,
        command: str = "",
        returncode: int | None = None,
        stderr: str = "",
        temporary: bool = False,
        cause: str | None = "infra",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, cause=cause)
        self.command = command
        self.returncode = returncode
        self.stderr = stderr
        self.temporary = temporary
        # Seconds the other side asked us to wait (HTTP Retry-After), when it said.
        self.retry_after = retry_after


class RunTimeout(CcciError):
    """A run passed its deadline."""

    def __init__(self, message: str) -> None:
        super().__init__(message, cause="timeout")
