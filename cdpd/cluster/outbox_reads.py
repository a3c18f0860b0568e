"""What `cdpd outbox stats|tail` and `cdpd rejects` read on the JetStream backend: the messages
stream's figures and newest messages, and the rejects ingest published to the aux stream.

Every read is an ephemeral consumer (cdpd/cluster/browse.py: in memory, one replica,
acknowledging nothing) or JetStream's stream and consumer info: nothing is left behind. A
message carrying `Cdpd-Destination` is a dead letter published again for one destination, not a
message cdpd took: `tail` leaves it out."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StreamState
from nats.js.errors import NotFoundError

from cdpd.cluster import status
from cdpd.cluster.browse import FETCH_MAX, aux_records, forget, newest, reading, record_of
from cdpd.cluster.layout import DESTINATION, RECEIVED_AT, Layout, row_of
from cdpd.model.rows import OutboxRow
from cdpd.outbox.reader import RejectCount, StoredMessage, StoredReject, TailFilter, stored_payload

REJECTS_COUNTED = 100_000  # the rejects `stats` and `rejects --counts` read at most
FOLLOW_WAIT_S = 1.0
NOT_KEPT = {
    "by_type": "messages are not counted by source and type on the JetStream backend"
    " (a stream keeps no index of them): `cdpd outbox tail --source S --type T` lists them",
    "file_bytes": "the stream's bytes are stream_bytes, kept on each of its replicas",
    "seconds_behind": "JetStream's consumers count the messages they are behind, not seconds",
}


class NoStream(Exception):
    """The messages stream does not exist yet (no node has started on this cluster)."""


class StreamConsumer(msgspec.Struct, frozen=True):
    """A durable consumer of the messages stream, as `outbox stats` lists the SQLite ones."""

    name: str
    kind: str  # delivery, replay, or - (an ephemeral reader)
    seq: int  # every message up to here is acknowledged
    messages_behind: int  # not yet handed out, and handed out but not acknowledged


class ClusterOutboxStats(msgspec.Struct, frozen=True):
    stream: str
    servers: list[str]
    stream_bytes: int
    replicas: int
    messages: int
    first_seq: int
    last_seq: int
    first_received_at: str | None
    last_received_at: str | None
    rejects: list[RejectCount]
    rejects_counted: int  # REJECTS_COUNTED at most: the counts are of the first ones
    consumers: list[StreamConsumer]
    # The SQLite figures this backend does not have, and why.
    not_kept: dict[str, str] = msgspec.field(default_factory=lambda: dict(NOT_KEPT))


async def stats(js: JetStreamContext, layout: Layout, servers: list[str]) -> ClusterOutboxStats:
    found = await status.read(js, layout)
    stream = next((s for s in found.streams if s.name == layout.stream), None)
    if stream is None:
        raise NoStream(f"there is no stream {layout.stream} on the cluster yet")
    first_at, last_at = await _received_at(js, layout, stream.first_seq, stream.last_seq)
    counts, counted = await reject_counts(js, layout)
    return ClusterOutboxStats(
        stream=stream.name,
        servers=servers,
        stream_bytes=stream.bytes,
        replicas=stream.replicas,
        messages=stream.messages,
        first_seq=stream.first_seq,
        last_seq=stream.last_seq,
        first_received_at=first_at,
        last_received_at=last_at,
        rejects=counts,
        rejects_counted=counted,
        consumers=[
            StreamConsumer(c.name, _kind(c.name), c.ack_floor_seq, c.pending + c.ack_pending)
            for c in stream.consumers
        ],
    )


async def tail(
    js: JetStreamContext, layout: Layout, count: int, only: TailFilter
) -> tuple[list[StoredMessage], int]:
    """The `count` newest messages that pass `only`, oldest first, and the stream's last
    sequence when they were read (where a `follow` goes on)."""
    state = await _state(js, layout.stream)
    found = await newest(
        js,
        layout.stream,
        layout.messages_subjects,
        count,
        lambda m: _passes(only, m),
        first_seq=state.first_seq,
        last_seq=state.last_seq,
    )
    return [_stored(m) for m in found], state.last_seq


async def follow(
    js: JetStreamContext, layout: Layout, after_seq: int, only: TailFilter
) -> AsyncIterator[StoredMessage]:
    """Messages stored after `after_seq` that pass `only`, as they are stored, until the caller
    stops iterating (its consumer goes with it)."""
    config = reading(DeliverPolicy.BY_START_SEQUENCE, start_seq=after_seq + 1)
    sub = await js.pull_subscribe(layout.messages_subjects, stream=layout.stream, config=config)
    try:
        while True:
            try:
                batch = await sub.fetch(FETCH_MAX, timeout=FOLLOW_WAIT_S)
            except TimeoutError:
                continue
            for message in batch:
                if _passes(only, message):
                    yield _stored(message)
    finally:
        await forget(js, layout.stream, sub)


async def rejects(
    js: JetStreamContext, layout: Layout, count: int, source: str | None, reason_code: str | None
) -> list[StoredReject]:
    """The `count` newest rejects (of a source, of a reason code), oldest first."""
    try:
        state = await _state(js, layout.aux_stream)
    except NoStream:
        return []

    def wanted(message: Msg) -> bool:
        record = record_of(message.data)
        return (source is None or record.get("source") == source) and (
            reason_code is None or record.get("reason_code") == reason_code
        )

    found = await newest(
        js,
        layout.aux_stream,
        layout.aux_subject("rejects"),
        count,
        wanted,
        first_seq=state.first_seq,
        last_seq=state.last_seq,
    )
    return [_reject(m.metadata.sequence.stream, record_of(m.data)) for m in found]


async def reject_counts(js: JetStreamContext, layout: Layout) -> tuple[list[RejectCount], int]:
    """Rejects counted by source and reason code (of the first REJECTS_COUNTED), and how many
    were counted."""
    try:
        found = await aux_records(js, layout, "rejects", REJECTS_COUNTED)
    except NotFoundError:
        return [], 0
    counts = Counter(
        (record.get("source"), str(record.get("reason_code", ""))) for _, record in found
    )
    ordered = sorted(counts.items(), key=lambda item: (item[0][0] or "", item[0][1]))
    return [RejectCount(source, code, n) for (source, code), n in ordered], len(found)


async def _state(js: JetStreamContext, stream: str) -> StreamState:
    try:
        return (await js.stream_info(stream)).state
    except NotFoundError:
        raise NoStream(f"there is no stream {stream} on the cluster yet") from None


async def _received_at(
    js: JetStreamContext, layout: Layout, first_seq: int, last_seq: int
) -> tuple[str | None, str | None]:
    if not last_seq or first_seq > last_seq:
        return None, None
    first, last = [await js.get_msg(layout.stream, seq) for seq in (first_seq, last_seq)]
    return (first.headers or {}).get(RECEIVED_AT), (last.headers or {}).get(RECEIVED_AT)


def _kind(consumer: str) -> str:
    return next((k for k in ("delivery", "replay") if consumer.startswith(f"{k}_")), "-")


def _row(message: Msg) -> OutboxRow:
    return row_of(message.headers, message.data)


def _passes(only: TailFilter, message: Msg) -> bool:
    if DESTINATION in (message.headers or {}):
        return False
    row = _row(message)
    return (
        (only.source is None or row.source == only.source)
        and (only.type is None or row.type == only.type)
        and (only.event is None or row.event == only.event)
        and (only.user is None or only.user in (row.user_id, row.anonymous_id))
    )


def _stored(message: Msg) -> StoredMessage:
    row = _row(message)
    return StoredMessage(
        seq=message.metadata.sequence.stream,
        message_id=row.message_id,
        source=row.source,
        type=row.type,
        event=row.event,
        user_id=row.user_id,
        anonymous_id=row.anonymous_id,
        received_at=row.received_at,
        payload=stored_payload(row.payload),
    )


def _reject(seq: int, record: dict[str, Any]) -> StoredReject:
    def text(key: str) -> str:
        return str(record.get(key) or "")

    return StoredReject(
        id=seq,
        received_at=text("received_at"),
        source=record.get("source"),
        request_id=text("request_id"),
        reason_code=text("reason_code"),
        reason=text("reason"),
        message_id=record.get("message_id"),
        payload=text("payload"),
    )
