"""Reading a key-value bucket as it is now: every matching key's latest entry.

nats-py's `watch` (and `keys`, built on it) ends its first part with a marker that it can send
before the entries it follows, or never, when its callback fails on a busy node: a listing
could come up short or wait forever. These reads use a pull consumer of the bucket's stream
that counts what it holds, and every fetch is bounded."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from cdpd.cluster.browse import forget, reading

READ_BATCH = 1000
READ_TIMEOUT_S = 5.0
DELETED = ("DEL", "PURGE")  # the KV-Operation header of a key deleted or purged


class Latest(NamedTuple):
    """A key's latest entry; `value` is empty for a deleted key (`deleted`)."""

    key: str
    value: bytes
    revision: int
    deleted: bool = False


async def latest(
    js: JetStreamContext, bucket: str, pattern: str = ">", *, meta_only: bool = False
) -> list[Latest]:
    """The latest entry of every key of `bucket` matching `pattern` (deleted keys included,
    flagged); with `meta_only`, without their values."""
    prefix = f"$KV.{bucket}."
    config = reading(
        DeliverPolicy.LAST_PER_SUBJECT, headers_only=meta_only or None, inactive_s=60.0
    )
    stream = f"KV_{bucket}"
    subscription = await js.pull_subscribe(f"{prefix}{pattern}", stream=stream, config=config)
    found: list[Latest] = []
    try:
        remaining = await _pending(subscription)
        while remaining > 0:
            try:
                messages = await subscription.fetch(
                    min(remaining, READ_BATCH), timeout=READ_TIMEOUT_S
                )
            except nats.errors.TimeoutError:
                # Entries counted may have expired (a TTL) or been purged since: none is
                # coming when none is pending any more.
                remaining = await _pending(subscription)
                if remaining > 0:
                    raise
                break
            found += [_entry(m, prefix) for m in messages]
            remaining = messages[-1].metadata.num_pending or 0
    finally:
        with contextlib.suppress(nats.errors.Error):
            await forget(js, stream, subscription)  # called every poll: leave no consumer
    return found


async def _pending(subscription: JetStreamContext.PullSubscription) -> int:
    return (await subscription.consumer_info()).num_pending or 0


async def current(
    js: JetStreamContext, bucket: str, pattern: str = ">", *, meta_only: bool = False
) -> list[Latest]:
    """The keys matching `pattern` that hold a value now (deleted ones left out)."""
    return [e for e in await latest(js, bucket, pattern, meta_only=meta_only) if not e.deleted]


def _entry(message: Msg, prefix: str) -> Latest:
    operation = (message.headers or {}).get("KV-Operation")
    return Latest(
        message.subject[len(prefix) :],
        message.data or b"",
        message.metadata.sequence.stream,
        operation in DELETED,
    )
