"""Reading a stretch of a stream without a trace: an ephemeral consumer (in memory, one replica)
that acknowledges nothing, read until the stream's end or a bound (the dead letters, the aux
stream's rows, the newest messages for `cdpd outbox tail`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from cdpd.cluster.layout import Layout

FETCH_MAX = 256
FETCH_TIMEOUT_S = 0.5
# `newest` reads `count` sequences back first (at least FIRST_WINDOW), then twice as many each
# time up to LAST_WINDOW: most often every message is kept, and a rare one costs few reads.
FIRST_WINDOW = 128
LAST_WINDOW = 16_384


def reading(
    policy: DeliverPolicy,
    *,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    headers_only: bool | None = None,
    inactive_s: float = 30.0,
) -> ConsumerConfig:
    """An ephemeral consumer that leaves no trace: in memory, one replica, acknowledging
    nothing, removed by the server `inactive_s` after its last use."""
    return ConsumerConfig(
        deliver_policy=policy,
        opt_start_seq=start_seq,
        opt_start_time=start_time,
        headers_only=headers_only,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=inactive_s,
        mem_storage=True,
        num_replicas=1,
    )


async def browse(
    js: JetStreamContext,
    stream: str,
    subject: str,
    limit: int,
    *,
    since: datetime | None = None,
    from_seq: int | None = None,
    up_to_seq: int | None = None,
) -> list[Msg]:
    """Up to `limit` messages of `subject` in stream order, from the first (or the first
    stored at or after `since`, or the first at or after sequence `from_seq`), none after
    sequence `up_to_seq`."""
    policy = DeliverPolicy.ALL
    if since is not None:
        policy = DeliverPolicy.BY_START_TIME
    elif from_seq is not None:
        policy = DeliverPolicy.BY_START_SEQUENCE
    config = reading(policy, start_seq=from_seq, start_time=since)
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    found: list[Msg] = []
    try:
        info = await sub.consumer_info()
        # Nothing to read: answered now rather than after a fetch's timeout.
        pending = info.num_pending or 0
        while pending and len(found) < limit:
            try:
                batch = await sub.fetch(min(FETCH_MAX, limit - len(found)), timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                break
            found += batch
            if not batch or batch[-1].metadata.num_pending == 0:
                break
            if up_to_seq is not None and batch[-1].metadata.sequence.stream >= up_to_seq:
                break
    finally:
        await forget(js, stream, sub)
    if up_to_seq is not None:
        found = [m for m in found if m.metadata.sequence.stream <= up_to_seq]
    return found[:limit]


async def forget(js: JetStreamContext, stream: str, sub: JetStreamContext.PullSubscription) -> None:
    """Stop reading, and delete the ephemeral consumer now rather than after its inactivity
    threshold (it is gone already when the stream or the connection is)."""
    await sub.unsubscribe()
    with contextlib.suppress(NotFoundError, NoRespondersError, ConnectionClosedError):
        await js.delete_consumer(stream, sub._consumer)  # its name is kept only there


async def newest(
    js: JetStreamContext,
    stream: str,
    subject: str,
    count: int,
    keep: Callable[[Msg], bool],
    *,
    first_seq: int,
    last_seq: int,
) -> list[Msg]:
    """The last `count` messages of `subject` between two sequences that `keep` keeps, oldest
    first. A consumer cannot read backwards: windows of sequences are read from the end back,
    the first `count` long, each twice as long as the one before (up to LAST_WINDOW), each a
    bounded `browse`."""
    found: list[Msg] = []
    end, window = last_seq, max(count, FIRST_WINDOW)
    while count and end >= max(first_seq, 1) and len(found) < count:
        start = max(first_seq, end - window + 1, 1)
        batch = await browse(js, stream, subject, end - start + 1, from_seq=start, up_to_seq=end)
        found = [m for m in batch if keep(m)] + found
        end, window = start - 1, min(window * 2, LAST_WINDOW)
    return found[-count:] if count else []


async def aux_records(
    js: JetStreamContext, layout: Layout, table: str, limit: int, *, since: datetime | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Up to `limit` rows ingest published to the aux stream for `table` (from `since`), each
    with its sequence in the stream."""
    subject = layout.aux_subject(table)
    found = await browse(js, layout.aux_stream, subject, limit, since=since)
    return [(m.metadata.sequence.stream, record_of(m.data)) for m in found]


def record_of(data: bytes) -> dict[str, Any]:
    """An aux row as the JSON object it was published as; empty when it is not one."""
    try:
        found = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {}
    return found if isinstance(found, dict) else {}
