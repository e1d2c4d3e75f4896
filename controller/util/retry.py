"""Retrying external calls: named policies, and the one rule of what is retried (temporary errors)."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from controller.util.errors import ExternalError
from controller.util.timeutil import Deadline

log = logging.getLogger(__name__)
T = TypeVar("T")

LOGGED_REASON_CHARS = 300  # git and docker put whole stderr in a message; one log line is enough


class RandomTimesAttempt(wait_base):
    """Uniform in [low, high] seconds, times the number of the attempt that just failed."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return random.uniform(self.low, self.high) * retry_state.attempt_number


class AsAskedOrExponential(wait_base):
    """What the server asked for (Retry-After, capped), else exponential back-off."""

    def __init__(self, first: float, cap: float) -> None:
        self.exponential = tenacity.wait_exponential(multiplier=first, max=cap)
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        asked = getattr(error, "retry_after", None)
        if isinstance(asked, int | float) and asked >= 0:
            return min(float(asked), self.cap)
        return float(self.exponential(retry_state))


@dataclass(frozen=True)
class Policy:
    """How many attempts and how far apart. What is retried is not a policy's choice: see
    `is_temporary`."""

    name: str
    attempts: int | None  # None: until the deadline the caller passes
    wait: wait_base


# A Keycloak that is restarting or overloaded answers again within a second or two; a longer
# outage is the warm endpoint's health check's business, not one call's.
KEYCLOAK = Policy("keycloak", attempts=3, wait=tenacity.wait_exponential(multiplier=0.5))
# The engine frees a network once its endpoints detach and a volume once the container holding
# it is gone: nothing to back off from, so ask often for as long as the caller's deadline allows.
ENGINE_CLEANUP = Policy("engine cleanup", attempts=None, wait=tenacity.wait_fixed(0.25))
# Controllers pushing to one registry remote collide; random waits keep them from colliding
# again in step, and growing ones let a busy remote settle.
REGISTRY_PUSH = Policy("registry push", attempts=12, wait=RandomTimesAttempt(0.05, 0.3))
# A forge behind a proxy drops a request now and then, and a rate limit says when to come back;
# a longer outage is the reporter's business (its queue is on disk and is retried for hours).
FORGE = Policy("forge", attempts=4, wait=AsAskedOrExponential(first=0.5, cap=10.0))


def is_temporary(error: BaseException) -> bool:
    """The one rule of what is worth another attempt: the choke point that raised the error
    (git runner, Docker client, Keycloak client) knows whether it was an outage or a refusal."""
    return isinstance(error, ExternalError) and error.temporary


def call_with_retries(policy: Policy, attempt: Callable[[], T], *, deadline: Deadline | None = None,
                      only: type[ExternalError] = ExternalError,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """`attempt()`, again after each temporary error until the policy's attempts or `deadline`
    run out; then, or on any other error, that error is raised as it was. `only` narrows the
    temporary errors retried to one kind, where any other must reach the caller at once."""
    stops: list[stop_base] = []
    if policy.attempts is not None:
        stops.append(tenacity.stop_after_attempt(policy.attempts))
    if deadline is not None:
        stops.append(_StopAt(deadline))
    if not stops:
        raise ValueError(f"the {policy.name} retry policy has no attempt limit: pass a deadline")
    retrying = tenacity.Retrying(
        stop=tenacity.stop_any(*stops),
        wait=policy.wait,
        retry=tenacity.retry_if_exception(lambda error: isinstance(error, only) and is_temporary(error)),
        before_sleep=lambda state: _log_retry(policy, state),
        sleep=sleep,
        reraise=True,
    )
    return retrying(attempt)


class _StopAt(stop_base):
    """Stop once the caller's deadline has passed (its clock, not tenacity's)."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.deadline.expired()


def _log_retry(policy: Policy, state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    reason = error.message if isinstance(error, ExternalError) else str(error)
    reason = re.sub(r"\s+", " ", reason)[:LOGGED_REASON_CHARS]
    limit = f"of {policy.attempts}" if policy.attempts is not None else "before the deadline"
    log.warning("%s (%s: attempt %d %s failed; retrying in %.2f s)", reason, policy.name,
                state.attempt_number, limit, state.upcoming_sleep)
