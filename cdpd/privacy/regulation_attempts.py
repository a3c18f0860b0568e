"""One attempt at one regulation target, whatever the backend: run the work, turn its outcome
(rows removed, or a failure classified as the delivery retry policy classifies an answer) into
the target's next state, and log it. The backends store the state (`regulations_service` in the
outbox, `cdpd.cluster.regulations_worker` in the cluster's regulations bucket).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from cdpd.clock import Clock
from cdpd.config import Config, ConfigError
from cdpd.delivery.policy import decide
from cdpd.destinations.settings import RetryConfig
from cdpd.model.timestamps import format_ms, parse_ms
from cdpd.privacy.regulations import DESTINATION, FAILED, FINISHED, RUNNING
from cdpd.privacy.regulations_store import DueTarget, TargetUpdate
from cdpd.warehouse.loader import SYNC_ERRORS


class TargetFailed(Exception):
    def __init__(
        self, error: str, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.retry_after_s = retry_after_s
        self.permanent = False


def permanent(error: str) -> TargetFailed:
    """A failure no retry mends (a credential missing from the environment, say)."""
    failed = TargetFailed(error)
    failed.permanent = True
    return failed


async def attempt(
    due: DueTarget,
    work: Callable[[], Awaitable[int]],
    policy: RetryConfig,
    clock: Clock,
    bound: structlog.BoundLogger,
) -> TargetUpdate:
    """Run `work` (the rows it removed) once; the target's state after it."""
    started_ms = clock.now_ms()
    try:
        rows = await work()
    except TargetFailed as failed:
        return failed_update(due, failed, policy, started_ms, clock.now_ms())
    except ConfigError as exc:
        return failed_update(due, permanent(str(exc)), policy, started_ms, clock.now_ms())
    except SYNC_ERRORS as exc:
        store_error = TargetFailed(f"{type(exc).__name__}: {exc}")
        return failed_update(due, store_error, policy, started_ms, clock.now_ms())
    except Exception as exc:  # a fault of cdpd's own: recorded and retried, never a loop
        bound.exception("regulation_target_crashed")
        crashed = TargetFailed(f"cdpd failed on it: {type(exc).__name__}: {exc}")
        return failed_update(due, crashed, policy, started_ms, clock.now_ms())
    at = format_ms(clock.now_ms())
    return TargetUpdate(
        due.regulation_id,
        due.target,
        FINISHED,
        due.attempts + 1,
        due.first_attempt_at or format_ms(started_ms),
        at,
        rows_removed=rows,
        finished_at=at,
    )


def failed_update(
    due: DueTarget, failed: TargetFailed, policy: RetryConfig, started_ms: int, now_ms: int
) -> TargetUpdate:
    """RUNNING with the next attempt's time, or FAILED once the retry policy gives up."""
    first_ms = parse_ms(due.first_attempt_at) if due.first_attempt_at else started_ms
    attempt_number = due.attempts + 1
    if failed.permanent:
        verdict, next_ms = "dead", None
    else:
        decision = decide(
            policy,
            status=failed.status,
            attempt=attempt_number,
            first_attempt_ms=first_ms,
            now_ms=now_ms,
            retry_after_s=failed.retry_after_s,
        )
        verdict, next_ms = decision.verdict, decision.next_attempt_ms
    status = FAILED if verdict == "dead" else RUNNING
    at = format_ms(now_ms)
    return TargetUpdate(
        due.regulation_id,
        due.target,
        status,
        attempt_number,
        format_ms(first_ms),
        format_ms(next_ms) if next_ms is not None else at,
        last_status=failed.status,
        last_error=failed.error[:500],
        finished_at=at if status == FAILED else None,
    )


def given_up(due: DueTarget, reason: str, now_ms: int) -> TargetUpdate:
    """A target not tried because one it waits for failed."""
    at = format_ms(now_ms)
    return TargetUpdate(
        due.regulation_id,
        due.target,
        FAILED,
        due.attempts,
        due.first_attempt_at or at,
        at,
        last_error=reason,
        finished_at=at,
    )


def log_outcome(bound: structlog.BoundLogger, update: TargetUpdate, overall: str) -> None:
    if update.status == FINISHED:
        bound.info("regulation_target_finished", rows_removed=update.rows_removed, overall=overall)
        return
    bound.warning(
        "regulation_target_failed",
        status=update.last_status,
        error=update.last_error,
        attempt=update.attempts,
        gave_up=update.status == FAILED,
        overall=overall,
    )


def retry_policy(config: Config, kind: str, target: str) -> RetryConfig:
    """A destination's own retry settings for its target, else the delivery defaults."""
    if kind == DESTINATION:
        name = target.partition(":")[2]
        destination = next((d for d in config.destinations if d.name == name), None)
        if destination is not None and destination.retry is not None:
            return destination.retry
    return config.delivery.retry
