"""What an answer's status means, for whoever sends (destinations) and whoever decides what
happens next (delivery's retry policy): success, retryable, or marking the destination
unhealthy. None stands for a timeout or a connection error."""

from __future__ import annotations

NOT_RETRIED_5XX = frozenset({501, 505})
RETRIED_4XX = frozenset({408, 429})
UNHEALTHY = frozenset({401, 403})


def is_success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def is_retryable(status: int | None) -> bool:
    if status is None:
        return True
    if 500 <= status <= 599:
        return status not in NOT_RETRIED_5XX
    return status in RETRIED_4XX


def marks_unhealthy(status: int | None) -> bool:
    return status in UNHEALTHY
