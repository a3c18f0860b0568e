from collections.abc import Callable

import pytest

from cdpd.delivery.policy import backoff_s, decide, is_retryable, marks_unhealthy
from cdpd.destinations.settings import RetryConfig

POLICY = RetryConfig(
    retry_window_s=3600, min_attempts=3, backoff_min_s=10, backoff_max_s=300, backoff_factor=2
)
T0 = 1_000_000


def always(value: float) -> Callable[[], float]:
    return lambda: value


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert decide(POLICY, status=status, attempt=1, first_attempt_ms=T0, now_ms=T0).verdict == (
        "delivered"
    )


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504, 507, 599])
def test_retryable(status: int | None) -> None:
    assert is_retryable(status)
    decision = decide(POLICY, status=status, attempt=1, first_attempt_ms=T0, now_ms=T0)
    assert decision.verdict == "retrying"


@pytest.mark.parametrize(
    "status", [301, 302, 307, 400, 401, 403, 404, 410, 413, 422, 501, 505, 600, 999]
)
def test_permanent_failures_are_dead_at_once(status: int) -> None:
    decision = decide(POLICY, status=status, attempt=1, first_attempt_ms=T0, now_ms=T0)
    assert decision.verdict == "dead"
    assert f"status {status}" in decision.reason


def test_401_and_403_mark_the_destination_unhealthy() -> None:
    assert marks_unhealthy(401)
    assert marks_unhealthy(403)
    assert not marks_unhealthy(500)
    assert not marks_unhealthy(None)


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    assert [backoff_s(POLICY, n, always(1.0)) for n in range(1, 8)] == [
        10,
        20,
        40,
        80,
        160,
        300,
        300,
    ]
    assert backoff_s(POLICY, 3, always(0.25)) == 10
    assert backoff_s(POLICY, 3, always(0.0)) == 0


def test_next_attempt_time() -> None:
    decision = decide(
        POLICY, status=503, attempt=2, first_attempt_ms=T0, now_ms=T0 + 5000, rand=always(0.5)
    )
    assert decision.next_attempt_ms == T0 + 5000 + 10_000


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    decision = decide(
        POLICY,
        status=429,
        attempt=1,
        first_attempt_ms=T0,
        now_ms=T0,
        retry_after_s=120,
        rand=always(1.0),
    )
    assert decision.next_attempt_ms == T0 + 120_000
    capped = decide(
        POLICY, status=429, attempt=1, first_attempt_ms=T0, now_ms=T0, retry_after_s=10**9
    )
    assert capped.next_attempt_ms == T0 + 3600_000


def test_dead_only_after_the_window_and_the_minimum_attempts() -> None:
    past_window = T0 + 3600_000
    # Window passed but only two attempts: keep going.
    assert decide(
        POLICY, status=500, attempt=2, first_attempt_ms=T0, now_ms=past_window
    ).verdict == ("retrying")
    # Three attempts but within the window: keep going.
    assert decide(
        POLICY, status=500, attempt=5, first_attempt_ms=T0, now_ms=T0 + 60_000
    ).verdict == ("retrying")
    # Both: give up.
    decision = decide(POLICY, status=500, attempt=3, first_attempt_ms=T0, now_ms=past_window)
    assert decision.verdict == "dead"
    assert "gave up after 3 attempts" in decision.reason
