"""The retry policy: what an attempt's outcome means for its delivery. Pure functions.

Status classes (Segment's and RudderStack's rules, made explicit):

- 2xx: delivered.
- 408, 429, 5xx except 501 and 505, a timeout or a connection error: retryable.
- any other status (3xx, other 4xx, 501, 505, anything outside 100-599): permanent, dead
  at once. 401 and 403 are permanent too, and also mark the destination unhealthy.

A retryable failure of attempt n (1-based) waits, with full jitter,

    delay = max(retry_after, uniform(0, 1) * min(backoff_max, backoff_min * factor ** (n - 1)))

where `retry_after` is the destination's Retry-After, if it sent one (honoured up to the retry
window). A delivery is given up
(dead) only when both hold: at least `retry_window` has passed since its first attempt, and it
has had at least `min_attempts` attempts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

import msgspec

from cdpd.destinations.settings import RetryConfig
from cdpd.model.statuses import (  # re-exported: the policy's status classes
    NOT_RETRIED_5XX,
    RETRIED_4XX,
    UNHEALTHY,
    is_retryable,
    is_success,
    marks_unhealthy,
)

__all__ = [
    "NOT_RETRIED_5XX",
    "RETRIED_4XX",
    "UNHEALTHY",
    "Decision",
    "backoff_s",
    "decide",
    "is_retryable",
    "is_success",
    "marks_unhealthy",
]

Verdict = Literal["delivered", "retrying", "dead"]


class Decision(msgspec.Struct, frozen=True):
    verdict: Verdict
    next_attempt_ms: int | None  # when to try again (retrying only)
    reason: str


def backoff_s(policy: RetryConfig, attempt: int, rand: Callable[[], float]) -> float:
    """Full jitter over an exponential ceiling, for the wait after failed attempt `attempt`."""
    ceiling = min(
        policy.backoff_max_s, policy.backoff_min_s * policy.backoff_factor ** (attempt - 1)
    )
    return rand() * ceiling


def decide(
    policy: RetryConfig,
    *,
    status: int | None,
    attempt: int,
    first_attempt_ms: int,
    now_ms: int,
    retry_after_s: float | None = None,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """The verdict on attempt number `attempt` (1-based) that ended at `now_ms`."""
    if is_success(status):
        return Decision("delivered", None, "delivered")
    if not is_retryable(status):
        return Decision("dead", None, f"status {status} is not retried")
    waited_s = (now_ms - first_attempt_ms) / 1000
    if waited_s >= policy.retry_window_s and attempt >= policy.min_attempts:
        return Decision("dead", None, f"gave up after {attempt} attempts over {waited_s:.0f} s")
    asked_s = min(retry_after_s or 0.0, policy.retry_window_s)
    delay_s = max(asked_s, backoff_s(policy, attempt, rand))
    return Decision("retrying", now_ms + round(delay_s * 1000), f"retry in {delay_s:.1f} s")
