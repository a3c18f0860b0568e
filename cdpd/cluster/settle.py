"""What a lane on the JetStream backend decides per message and per destination, pure: the
verdict on an attempt's result (by the retry policy, `delivery/policy.py`), and the consumers a
destination's lane reads."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from cdpd.cluster.layout import Layout
from cdpd.delivery import policy
from cdpd.destinations.base import Result
from cdpd.destinations.settings import Destination, RetryConfig


class Verdict(msgspec.Struct, frozen=True, gc=False):
    state: str  # delivered (ack), retrying (nak with delay_s) or dead (dead letter, term)
    delay_s: float
    status: int | None
    error: str | None


def verdict(
    result: Result,
    *,
    attempt: int,
    received_ms: int,
    now_ms: int,
    retry: RetryConfig,
    rand: Callable[[], float],
) -> Verdict:
    """The verdict on attempt number `attempt` (1-based: JetStream's delivery count) of a
    message received at `received_ms`, where its retry window starts."""
    if result.skipped or (policy.is_success(result.status) and not result.invalid):
        return Verdict("delivered", 0.0, result.status, None)
    error = result.error or f"HTTP {result.status}"
    if result.invalid:
        return Verdict("dead", 0.0, result.status, f"{error} (cannot be sent as it is)")
    if result.parked_until_ms is not None and result.parked_until_ms > now_ms:
        return Verdict("retrying", (result.parked_until_ms - now_ms) / 1000, result.status, error)
    decision = policy.decide(
        retry,
        status=result.status,
        attempt=attempt,
        first_attempt_ms=received_ms,
        now_ms=now_ms,
        retry_after_s=result.retry_after_s,
        rand=rand,
    )
    if decision.verdict == "retrying":
        delay_s = max(0.0, ((decision.next_attempt_ms or now_ms) - now_ms) / 1000)
        return Verdict("retrying", delay_s, result.status, error)
    return Verdict(decision.verdict, 0.0, result.status, f"{error} ({decision.reason})")


def consumer_specs(layout: Layout, config: Destination) -> list[tuple[str, str, int]]:
    """(durable name, filter subject, max ack pending) of each consumer a destination's lane
    reads: one for all partitions, or with `ordering = "user"` one per partition."""
    if config.ordering != "user":
        pending = max(1000, 4 * config.concurrency * config.batch_size)
        return [(layout.delivery_consumer(config.name), layout.messages_subjects, pending)]
    return [
        (layout.partition_consumer(config.name, p), layout.message_subject(p), 1)
        for p in range(layout.partitions)
    ]
