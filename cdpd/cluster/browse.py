"""Reading a stretch of a stream without a trace: an ephemeral consumer that acknowledges
nothing, read until the stream's end or a bound (the dead letters, the aux stream's rows)."""

from __future__ import annotations

from datetime import datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

FETCH_MAX = 256
FETCH_TIMEOUT_S = 0.5


async def browse(
    js: JetStreamContext,
    stream: str,
    subject: str,
    limit: int,
    *,
    since: datetime | None = None,
    from_seq: int | None = None,
) -> list[Msg]:
    """Up to `limit` messages of `subject` in stream order, from the first (or the first
    stored at or after `since`, or the first at or after sequence `from_seq`)."""
    policy = DeliverPolicy.ALL
    if since is not None:
        policy = DeliverPolicy.BY_START_TIME
    elif from_seq is not None:
        policy = DeliverPolicy.BY_START_SEQUENCE
    config = ConsumerConfig(
        deliver_policy=policy,
        opt_start_time=since,
        opt_start_seq=from_seq,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    found: list[Msg] = []
    try:
        while len(found) < limit:
            try:
                batch = await sub.fetch(min(FETCH_MAX, limit - len(found)), timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                break
            found += batch
            if batch and batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found[:limit]
