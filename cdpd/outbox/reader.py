"""Read-only queries over the outbox for the CLI: counts, sizes and the most recent messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
COLUMNS = "seq, message_id, source, type, event, user_id, anonymous_id, received_at, payload"


class TailFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which messages `tail` shows; None matches any. `user` is a userId or an anonymousId."""

    source: str | None = None
    type: str | None = None
    event: str | None = None
    user: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition (parameterised) and its parameters."""
        terms, params = ["1"], []
        for column in ("source", "type", "event"):
            value = getattr(self, column)
            if value is not None:
                terms.append(f"{column} = ?")
                params.append(value)
        if self.user is not None:
            terms.append("(user_id = ? OR anonymous_id = ?)")
            params += [self.user, self.user]
        return " AND ".join(terms), params


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


async def tail(
    path: Path, limit: int, only: TailFilter | None = None, up_to_seq: int | None = None
) -> list[StoredMessage]:
    """The `limit` most recent messages (up to `up_to_seq`) that pass `only`, oldest first."""
    condition, params = (only or TailFilter()).where()
    if up_to_seq is not None:
        condition, params = f"{condition} AND seq <= ?", [*params, up_to_seq]
    # The condition is built of constant terms; values are parameters.
    sql = f"SELECT {COLUMNS} FROM messages WHERE {condition} ORDER BY seq DESC LIMIT ?"  # noqa: S608
    async with schema.connect(path, readonly=True) as conn:
        rows = await conn.execute_fetchall(sql, (*params, limit))
    return [_stored_message(row) for row in reversed(list(rows))]


async def follow(
    path: Path, after_seq: int, only: TailFilter, poll_interval_s: float = 0.25
) -> AsyncIterator[StoredMessage]:
    """Messages stored after `after_seq` that pass `only`, as they are committed (polled: the
    daemon that writes them is another process), until the caller stops iterating."""
    condition, params = only.where()
    sql = (
        f"SELECT {COLUMNS} FROM messages WHERE seq > ? AND {condition}"  # noqa: S608 - as in tail
        " ORDER BY seq LIMIT 1000"
    )
    async with schema.connect(path, readonly=True) as conn:
        while True:
            rows = list(await conn.execute_fetchall(sql, (after_seq, *params)))
            for row in rows:
                yield _stored_message(row)
            if rows:
                after_seq = rows[-1][0]
            else:
                await asyncio.sleep(poll_interval_s)


async def last_seq(path: Path) -> int:
    async with schema.connect(path, readonly=True) as conn:
        ((seq,),) = await conn.execute_fetchall("SELECT coalesce(max(seq), 0) FROM messages")
    return int(seq)


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
        payload=stored_payload(payload),
    )


def stored_payload(text: str) -> Any:
    """The stored JSON, decoded; as it is stored when it cannot be (a number out of range that
    an older cdpd accepted): it is still JSON, which encoding the message copies."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return msgspec.Raw(text.encode())


class StoredReject(msgspec.Struct, frozen=True):
    id: int
    received_at: str
    source: str | None
    request_id: str
    reason_code: str
    reason: str
    message_id: str | None
    payload: str


RECENT_REJECTS = """
SELECT id, received_at, source, request_id, reason_code, reason, message_id, payload
FROM rejects
WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR reason_code = ?2)
ORDER BY id DESC LIMIT ?3
"""


async def rejects(
    path: Path, limit: int, source: str | None = None, reason_code: str | None = None
) -> list[StoredReject]:
    """The `limit` most recent rejects (of a source, of a reason code), oldest first."""
    async with schema.connect(path, readonly=True) as conn:
        rows = await conn.execute_fetchall(RECENT_REJECTS, (source, reason_code, limit))
    return [StoredReject(*row) for row in reversed(list(rows))]


async def reject_counts(path: Path) -> list[RejectCount]:
    async with schema.connect(path, readonly=True) as conn:
        return [RejectCount(*row) for row in await conn.execute_fetchall(COUNT_REJECTS)]
