"""What an answer's status means, for whoever sends (destinations) and whoever decides what
happens next (delivery's retry policy): success, retryable, or marking the destination
unhealthy. None stands for a timeout or a connection error."""

from __future__ import annotations

NOT_RETRIED_5XX = frozenset({501, 505})
RETRIED_4XX = frozenset({408, 429})
UNHEALTHY = frozenset({401, 403})
# How an error text starts when the destination refused cdpd's credentials in its own way (an
# API's 400 "Invalid API key", a broker's authentication error): unhealthy, as a 401 is.
CREDENTIALS_REFUSED = "credentials refused: "


def is_success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def is_retryable(status: int | None) -> bool:
    if status is None:
        return True
    if 500 <= status <= 599:
        return status not in NOT_RETRIED_5XX
    return status in RETRIED_4XX


def marks_unhealthy(status: int | None, error: str | None = None) -> bool:
    """A 401 or 403, or an error text saying the credentials were refused."""
    return status in UNHEALTHY or (error is not None and error.startswith(CREDENTIALS_REFUSED))
