"""Read-only queries over the outbox for the CLI: counts, sizes and the most recent messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from cdpd.outbox import consumers, continuity, schema
from cdpd.outbox.space import outbox_bytes


class TypeCount(msgspec.Struct, frozen=True):
    source: str
    type: str
    messages: int


class RejectCount(msgspec.Struct, frozen=True):
    source: str | None
    reason_code: str
    rejects: int


class OutboxStats(msgspec.Struct, frozen=True):
    path: str
    file_bytes: int
    messages: int
    first_received_at: str | None
    last_received_at: str | None
    by_type: list[TypeCount]
    rejects: list[RejectCount]
    consumers: list[consumers.ConsumerLag] = []
    last_seq: int = 0  # the highest seq ever given (it never goes down, even when pruned)
    # Warehouses ahead of the outbox (filled in by the CLI, which reads the warehouses).
    sequence_gaps: list[continuity.SequenceGap] = []


class StoredMessage(msgspec.Struct, frozen=True):
    seq: int
    message_id: str
    source: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    received_at: str
    payload: Any


COUNT_BY_TYPE = """
SELECT source, type, count(*) FROM messages GROUP BY source, type ORDER BY source, type
"""
COUNT_REJECTS = """
SELECT source, reason_code, count(*) FROM rejects GROUP BY source, reason_code
ORDER BY source, reason_code
"""
TIME_RANGE = "SELECT count(*), min(received_at), max(received_at) FROM messages"
TAIL = """
SELECT seq, message_id, source, type, event, user_id, anonymous_id, received_at, payload
FROM messages ORDER BY seq DESC LIMIT ?
"""


async def stats(path: Path) -> OutboxStats:
    async with schema.connect(path, readonly=True) as conn:
        by_type = [TypeCount(*row) for row in await conn.execute_fetchall(COUNT_BY_TYPE)]
        rejects = [RejectCount(*row) for row in await conn.execute_fetchall(COUNT_REJECTS)]
        ((count, first, last),) = await conn.execute_fetchall(TIME_RANGE)
        lags = await consumers.lags(conn)
        last_seq = await continuity.high_water(conn)
    return OutboxStats(
        path=str(path),
        file_bytes=outbox_bytes(path),
        messages=count,
        first_received_at=first,
        last_received_at=last,
        by_type=by_type,
        rejects=rejects,
        consumers=lags,
        last_seq=last_seq,
    )


async def tail(path: Path, limit: int) -> list[StoredMessage]:
    """The `limit` most recent messages, oldest first."""
    async with schema.connect(path, readonly=True) as conn:
        rows = await conn.execute_fetchall(TAIL, (limit,))
    return [_stored_message(row) for row in reversed(list(rows))]


def _stored_message(row: Any) -> StoredMessage:
    seq, message_id, source, kind, event, user_id, anonymous_id, received_at, payload = row
    return StoredMessage(
        seq=seq,
        message_id=message_id,
        source=source,
        type=kind,
        event=event,
        user_id=user_id,
        anonymous_id=anonymous_id,
        received_at=received_at,
        payload=_payload(payload),
    )


def _payload(text: str) -> Any:
    """The stored JSON, decoded; as it is stored when it cannot be (a number out of range that
    an older cdpd accepted): it is still JSON, which encoding the message copies."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return msgspec.Raw(text.encode())
