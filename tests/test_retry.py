"""The one retry helper: temporary errors are tried again within a policy's bounds, anything
else reaches the caller at once; the named policies wait what they say."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import tenacity

from controller.registry.git import PushRejected
from controller.util.errors import CcciError, ExternalError
from controller.util.retry import (
    ENGINE_CLEANUP,
    KEYCLOAK,
    REGISTRY_PUSH,
    Policy,
    call_with_retries,
    is_temporary,
)
from controller.util.timeutil import Deadline

FAST = Policy("fast", attempts=4, wait=tenacity.wait_fixed(0.001))


class Flaky:
    """Fails with the given errors in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def temporary(text: str = "connection refused") -> ExternalError:
    return ExternalError(text, temporary=True)


def recorded_sleeps() -> tuple[list[float], Callable[[float], None]]:
    slept: list[float] = []
    return slept, slept.append


def test_a_temporary_error_is_retried_and_then_succeeds() -> None:
    flaky = Flaky(temporary(), temporary())
    assert call_with_retries(FAST, flaky) == "done"
    assert flaky.calls == 3


def test_a_permanent_error_is_raised_at_once() -> None:
    refused = ExternalError("the admin credentials were refused")
    flaky = Flaky(refused)
    with pytest.raises(ExternalError) as raised:
        call_with_retries(FAST, flaky)
    assert raised.value is refused and flaky.calls == 1


def test_an_error_that_is_not_external_is_raised_at_once() -> None:
    for error in (CcciError("bad input"), ValueError("a bug")):
        flaky = Flaky(error)
        with pytest.raises(type(error)):
            call_with_retries(FAST, flaky)
        assert flaky.calls == 1


def test_attempts_are_bounded_and_the_last_error_is_raised_as_it_was() -> None:
    errors = [temporary(f"outage {n}") for n in range(10)]
    flaky = Flaky(*errors)
    with pytest.raises(ExternalError) as raised:
        call_with_retries(FAST, flaky)
    assert flaky.calls == FAST.attempts
    assert raised.value is errors[FAST.attempts - 1] and raised.value.temporary


def test_only_narrows_retries_to_one_kind_of_temporary_error() -> None:
    rejected = PushRejected("the remote moved first")
    flaky = Flaky(rejected, rejected)
    assert call_with_retries(FAST, flaky, only=PushRejected) == "done"
    unreachable = temporary("could not read from remote repository")
    flaky = Flaky(unreachable)
    with pytest.raises(ExternalError) as raised:
        call_with_retries(FAST, flaky, only=PushRejected)
    assert raised.value is unreachable and flaky.calls == 1


def test_a_rejected_push_is_temporary_whatever_git_said() -> None:
    assert PushRejected("! [rejected] main -> main (fetch first)").temporary
    assert is_temporary(PushRejected("x"))


def test_the_deadline_policy_stops_at_the_deadline() -> None:
    deadline = Deadline(0.2)
    flaky = Flaky(*[temporary() for _ in range(1000)])
    started = time.monotonic()
    with pytest.raises(ExternalError):
        # A tenth of the policy's pause keeps the test short; the deadline decides, not a count.
        call_with_retries(ENGINE_CLEANUP, flaky, deadline=deadline, sleep=lambda s: time.sleep(s / 10))
    took = time.monotonic() - started
    assert deadline.expired() and took < 0.5
    assert 2 <= flaky.calls < 1000


def test_the_deadline_policy_tries_once_when_the_deadline_has_passed() -> None:
    slept, sleep = recorded_sleeps()
    flaky = Flaky(temporary())
    with pytest.raises(ExternalError):
        call_with_retries(ENGINE_CLEANUP, flaky, deadline=Deadline(0), sleep=sleep)
    assert flaky.calls == 1 and slept == []


def test_a_policy_without_a_limit_needs_a_deadline() -> None:
    with pytest.raises(ValueError, match="pass a deadline"):
        call_with_retries(ENGINE_CLEANUP, Flaky())


def test_keycloak_policy_tries_three_times_half_a_second_then_a_second_apart() -> None:
    slept, sleep = recorded_sleeps()
    flaky = Flaky(*[temporary() for _ in range(5)])
    with pytest.raises(ExternalError):
        call_with_retries(KEYCLOAK, flaky, sleep=sleep)
    assert flaky.calls == 3 and slept == [0.5, 1.0]


def test_engine_cleanup_policy_asks_every_quarter_second() -> None:
    slept, sleep = recorded_sleeps()
    flaky = Flaky(temporary(), temporary(), temporary())
    assert call_with_retries(ENGINE_CLEANUP, flaky, deadline=Deadline(60), sleep=sleep) == "done"
    assert slept == [0.25, 0.25, 0.25]


def test_registry_push_policy_tries_twelve_times_with_jitter_growing_by_attempt() -> None:
    slept, sleep = recorded_sleeps()
    flaky = Flaky(*[PushRejected("the remote moved first") for _ in range(20)])
    with pytest.raises(PushRejected):
        call_with_retries(REGISTRY_PUSH, flaky, sleep=sleep)
    assert flaky.calls == 12 and len(slept) == 11
    for attempt, pause in enumerate(slept, start=1):
        assert 0.05 * attempt <= pause <= 0.3 * attempt


def test_each_retry_logs_one_warning_with_the_attempt_number(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky(temporary("keycloak at http://127.0.0.1:1: list realms: cannot connect"), temporary())
    with caplog.at_level(logging.WARNING, logger="controller.util.retry"):
        call_with_retries(FAST, flaky)
    lines = [r.getMessage() for r in caplog.records if r.name == "controller.util.retry"]
    assert len(lines) == 2
    assert "list realms: cannot connect" in lines[0] and "attempt 1 of 4" in lines[0]
    assert "attempt 2 of 4" in lines[1]
