"""Outbox consumers: every stage that reads messages after they are accepted.

A consumer has a name (`delivery:NAME` for a destination's lane, `replay:ID` for a replay job)
and a durable position in the `consumers` table: every message at or below `seq` is done, and
so is every seq inside `done_ranges` (finished out of order, beyond `seq`). A consumer reads in
order from a read-only connection of its own, never through the writer, and the writer wakes it
after every commit that stored messages. Retention keeps every message some consumer still
needs (the outbox's job, see delivery/retention.py).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import msgspec

from cdpd.model.timestamps import format_ms, now_ms, parse_ms
from cdpd.waits import first_of

Range = tuple[int, int]  # first and last seq, both included


class Progress:
    """What a consumer has finished: everything up to `seq`, and `done` ranges beyond it.

    Work is finished in ranges of seqs that may complete out of order (concurrent batches);
    `seq` moves over the highest contiguous finished seq, and what finished beyond it is kept
    as ranges, so a restart resends only what was unfinished. Finishing a range twice, or one
    that overlaps a finished one, changes nothing."""

    def __init__(self, seq: int, done: Sequence[Range] = ()) -> None:
        self.seq = seq
        self.done: list[Range] = []
        for first, last in done:
            self.finish(first, last)

    def finish(self, first: int, last: int) -> None:
        if last <= self.seq or last < first:
            return
        first = max(first, self.seq + 1)
        index = bisect.bisect_left(self.done, (first, last))
        self.done.insert(index, (first, last))
        self._merge()

    def is_done(self, seq: int) -> bool:
        if seq <= self.seq:
            return True
        index = bisect.bisect_right(self.done, (seq, float("inf"))) - 1
        return index >= 0 and self.done[index][0] <= seq <= self.done[index][1]

    @property
    def furthest(self) -> int:
        """The highest finished seq."""
        return self.done[-1][1] if self.done else self.seq

    def _merge(self) -> None:
        merged: list[Range] = []
        for first, last in self.done:
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        while merged and merged[0][0] <= self.seq + 1:
            self.seq = max(self.seq, merged.pop(0)[1])
        self.done = merged


class Position(msgspec.Struct, frozen=True):
    """A consumer's row in `consumers`."""

    name: str
    kind: str
    seq: int
    done_ranges: list[Range]
    paused: bool
    updated_at: str


class ConsumerLag(msgspec.Struct, frozen=True):
    """How far a consumer is behind the outbox's end, for `cdpd outbox stats`."""

    name: str
    kind: str
    seq: int
    paused: bool
    messages_behind: int
    seconds_behind: float


_encoder = msgspec.json.Encoder()
_ranges = msgspec.json.Decoder(list[tuple[int, int]])

SELECT_POSITIONS = (
    "SELECT name, kind, seq, done_ranges, paused, updated_at FROM consumers ORDER BY name"
)
UPSERT_POSITION = """
INSERT INTO consumers (name, kind, seq, done_ranges, paused, updated_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, done_ranges = excluded.done_ranges,
    paused = excluded.paused, updated_at = excluded.updated_at
"""
SAVE_PROGRESS = "UPDATE consumers SET seq = ?, done_ranges = ?, updated_at = ? WHERE name = ?"


async def positions(conn: aiosqlite.Connection) -> dict[str, Position]:
    rows = await conn.execute_fetchall(SELECT_POSITIONS)
    return {
        name: Position(name, kind, seq, _ranges.decode(done), bool(paused), updated_at)
        for name, kind, seq, done, paused, updated_at in rows
    }


async def put(conn: aiosqlite.Connection, position: Position) -> None:
    await conn.execute(
        UPSERT_POSITION,
        (
            position.name,
            position.kind,
            position.seq,
            _encoder.encode(position.done_ranges).decode(),
            int(position.paused),
            position.updated_at,
        ),
    )


async def save(conn: aiosqlite.Connection, name: str, progress: Progress, at: str) -> None:
    """Store a consumer's progress (one statement, inside the caller's transaction)."""
    await conn.execute(
        SAVE_PROGRESS, (progress.seq, _encoder.encode(progress.done).decode(), at, name)
    )


async def forget(conn: aiosqlite.Connection, names: Sequence[str]) -> None:
    await conn.executemany("DELETE FROM consumers WHERE name = ?", [(n,) for n in names])


async def keep_only(conn: aiosqlite.Connection, kind: str, names: Sequence[str]) -> None:
    """Forget the consumers of `kind` not named (stages no longer configured)."""
    known = [p.name for p in (await positions(conn)).values() if p.kind == kind]
    await forget(conn, [name for name in known if name not in names])


async def mirror(conn: aiosqlite.Connection, name: str, kind: str, seq: int) -> None:
    """Record the position of a consumer that keeps its own elsewhere (a warehouse keeps its
    in the warehouse, beside the rows it covers): for retention and for people to read."""
    await put(conn, Position(name, kind, seq, [], False, format_ms(now_ms())))


async def oldest_needed_seq(conn: aiosqlite.Connection) -> int | None:
    """The lowest seq a running consumer has not finished (None: no consumer)."""
    rows = await conn.execute_fetchall("SELECT min(seq) + 1 FROM consumers WHERE paused = 0")
    value = next(iter(rows))[0] if rows else None
    return None if value is None else int(value)


async def lags(conn: aiosqlite.Connection, at_ms: int | None = None) -> list[ConsumerLag]:
    """Every consumer with how many messages it has yet to pass and how old the oldest of them
    is (0 when it is at the end)."""
    at_ms = now_ms() if at_ms is None else at_ms
    found = []
    for position in (await positions(conn)).values():
        rows: Any = await conn.execute_fetchall(
            "SELECT count(*), min(received_at) FROM messages WHERE seq > ?", (position.seq,)
        )
        behind, oldest = next(iter(rows))
        finished = sum(last - first + 1 for first, last in position.done_ranges)
        found.append(
            ConsumerLag(
                name=position.name,
                kind=position.kind,
                seq=position.seq,
                paused=position.paused,
                messages_behind=max(0, behind - finished),
                seconds_behind=0.0 if oldest is None else max(0, at_ms - parse_ms(oldest)) / 1000,
            )
        )
    return found


async def open_reader(path: Path) -> aiosqlite.Connection:
    """A read-only connection of a consumer's own (its own thread: reads never queue behind
    the writer's work)."""
    conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    await conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class Message(msgspec.Struct, frozen=True, gc=False):
    """A stored message as a consumer reads it (the columns of `messages`)."""

    seq: int
    message_id: str
    source: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    received_at: str
    payload: str


READ_AFTER = """
SELECT seq, message_id, source, type, event, user_id, anonymous_id, received_at, payload
FROM messages WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?
"""


class OrderedReader(Protocol):
    """What a stage that processes messages in order reads them through: `Consumer` on the
    SQLite outbox, `cdpd.cluster.ordered.StreamConsumer` on the JetStream backend."""

    seq: int
    new_messages: asyncio.Event

    async def start(self, from_seq: int = 0) -> int: ...

    async def read(self, limit: int) -> list[Message]: ...

    async def wait(self, stop: asyncio.Event, poll_s: float) -> None: ...

    async def close(self) -> None: ...


class Consumer:
    """A stage that reads the outbox in order past a durable position and moves it in the same
    transaction as its own effects: identity resolution, audiences, anything that processes
    messages a batch at a time.

        consumer = Consumer("identity", "identity", path, writer.transact, lambda: writer.last_seq)
        writer.on_messages(consumer.new_messages)
        await consumer.start(from_seq=0)
        while not stop.is_set():
            batch = await consumer.read(1000)
            if batch:
                await consumer.advance(batch[-1].seq, apply_effects)  # one transaction
            else:
                await consumer.wait(stop, poll_s=1.0)
    """

    def __init__(
        self,
        name: str,
        kind: str,
        path: Path,
        transact: Callable[[Callable[[aiosqlite.Connection], Awaitable[Any]]], Awaitable[Any]],
        end_seq: Callable[[], int],
    ) -> None:
        self.name = name
        self.kind = kind
        self._path = path
        self._transact = transact
        self._end_seq = end_seq
        self.new_messages = asyncio.Event()  # the writer sets it after each commit
        self.seq = 0
        self._reader: aiosqlite.Connection | None = None

    async def start(self, from_seq: int = 0) -> int:
        """Create the consumer at `from_seq` the first time; returns its stored position."""

        async def start(conn: aiosqlite.Connection) -> int:
            known = (await positions(conn)).get(self.name)
            if known is None:
                at = format_ms(now_ms())
                await put(conn, Position(self.name, self.kind, from_seq, [], False, at))
                return from_seq
            return known.seq

        self.seq = await self._transact(start)
        if self._reader is None:
            self._reader = await open_reader(self._path)
        return self.seq

    async def read(self, limit: int) -> list[Message]:
        """The next `limit` messages past the position (committed ones only)."""
        assert self._reader is not None, "start() first"
        rows = await self._reader.execute_fetchall(READ_AFTER, (self.seq, self._end_seq(), limit))
        return [Message(*row) for row in rows]

    async def advance(
        self,
        to_seq: int,
        effects: Callable[[aiosqlite.Connection], Awaitable[Any]] | None = None,
    ) -> None:
        """Apply `effects` and move the position to `to_seq` in one transaction."""

        async def advance(conn: aiosqlite.Connection) -> None:
            if effects is not None:
                await effects(conn)
            await save(conn, self.name, Progress(to_seq), format_ms(now_ms()))

        await self._transact(advance)
        self.seq = to_seq

    async def wait(self, stop: asyncio.Event, poll_s: float) -> None:
        """Until new messages commit, `stop` is set, or `poll_s` passes."""
        if self._end_seq() > self.seq:
            return
        self.new_messages.clear()
        await first_of(self.new_messages.wait(), stop.wait(), timeout_s=poll_s)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
