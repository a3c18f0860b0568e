"""Reading the messages stream in stream-sequence order, for the stages that run on one node at
a time: the warehouse loads (`read_range`) and the identity stage (`StreamConsumer`, the
outbox consumer's interface over the stream).

Each read is an ephemeral consumer that starts at a sequence and acknowledges nothing: the
position is the reader's own (in the warehouse, or in the identity store), never JetStream's.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosqlite
import structlog
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from cdpd.cluster.browse import forget, reading
from cdpd.cluster.layout import DESTINATION, Layout, row_of
from cdpd.model.pragmas import SECURE_DELETE
from cdpd.model.rows import OutboxRow
from cdpd.outbox.consumers import Message
from cdpd.waits import first_of

log = structlog.get_logger("cdpd.cluster")

FETCH_TIMEOUT_S = 5.0
IDLE_WAIT_S = 5.0  # a caught-up consumer's long fetch: how long the server holds it open


def not_replayed(headers: dict[str, str]) -> bool:
    """Not a dead letter replayed for one destination (`Cdpd-Destination`, cdpd/cluster/dead.py):
    every stage saw it when it was first accepted."""
    return DESTINATION not in headers


async def read_range(
    js: JetStreamContext,
    layout: Layout,
    after_seq: int,
    count: int,
    keep: Callable[[dict[str, str]], bool] = not_replayed,
) -> tuple[list[tuple[int, OutboxRow]], int]:
    """The messages with sequences in (`after_seq`, `after_seq + count`] whose headers `keep`
    accepts, in order, with their sequences, and the last sequence the read went through.
    `after_seq + count` is at most the stream's last sequence (sequences missing below it were
    deleted, not yet to come)."""
    if count <= 0:
        return [], after_seq
    config = reading(DeliverPolicy.BY_START_SEQUENCE, start_seq=after_seq + 1, inactive_s=60.0)
    subscription = await js.pull_subscribe(
        layout.messages_subjects, stream=layout.stream, config=config
    )
    found: list[tuple[int, OutboxRow]] = []
    through, last = after_seq, after_seq + count
    try:
        if (await subscription.consumer_info()).num_pending == 0:
            return found, last  # the range's messages were all deleted
        while through < last:
            try:
                messages = await subscription.fetch(last - through, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                break
            for m in messages:
                seq = m.metadata.sequence.stream
                if seq > last:
                    return found, last  # the sequences before it were deleted
                through = seq
                if keep(m.headers or {}):
                    found.append((seq, row_of(m.headers, m.data)))
                if m.metadata.num_pending == 0:
                    return found, last  # nothing after it yet: the rest was deleted
    finally:
        await subscription.unsubscribe()
    return found, through


def message_of(seq: int, row: OutboxRow) -> Message:
    return Message(
        seq,
        row.message_id,
        row.source,
        row.type,
        row.event,
        row.user_id,
        row.anonymous_id,
        row.received_at,
        row.payload,
    )


MESSAGES_TABLE = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL,
    event TEXT, user_id TEXT, anonymous_id TEXT, received_at TEXT NOT NULL, payload TEXT NOT NULL
)
"""
INSERT_MESSAGE = "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


class MessageCache:
    """A node-local copy of the stream's messages that the profiles stages have read, in the
    SQLite outbox's `messages` layout: the identity store's readers attach it as `outbox`, so
    Engage and the events history join payloads exactly as on the SQLite backend. It is
    rebuilt from the stream each time the node takes the profiles lease."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    async def add(self, messages: list[Message]) -> None:
        if not messages:
            return
        await self._conn.executemany(INSERT_MESSAGE, [_fields(m) for m in messages])
        await self._conn.commit()

    async def forget_users(self, user_ids: list[str]) -> None:
        """Drop the users' messages (a regulation's deletion: the stream no longer holds them)."""
        await self._conn.executemany(
            "DELETE FROM messages WHERE user_id = ?", [(user_id,) for user_id in user_ids]
        )
        await self._conn.commit()

    async def prune(self, through_seq: int, received_before: str) -> None:
        """Drop what the stages have applied (up to `through_seq`) and the Profile API's events
        history no longer shows (received before `received_before`)."""
        await self._conn.execute(
            "DELETE FROM messages WHERE seq <= ? AND received_at < ?",
            (through_seq, received_before),
        )
        await self._conn.commit()

    async def fill(
        self, js: JetStreamContext, layout: Layout, after_seq: int, through_seq: int
    ) -> None:
        """Copy the stream's messages in (`after_seq`, `through_seq`] (what Engage has yet to
        apply when a node takes over)."""
        while after_seq < through_seq:
            rows, after_seq_read = await read_range(
                js, layout, after_seq, min(10_000, through_seq - after_seq)
            )
            if after_seq_read == after_seq:
                break  # the stream no longer holds them (past max_age_s)
            await self.add([message_of(seq, row) for seq, row in rows])
            after_seq = after_seq_read


@contextlib.asynccontextmanager
async def fresh_cache(path: Path) -> AsyncIterator[MessageCache]:
    """An empty cache at `path` (what a former lease holder left there is dropped)."""
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    conn = await aiosqlite.connect(path)
    try:
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = OFF")  # rebuilt from the stream after a crash
        await conn.execute(SECURE_DELETE)  # a regulation's deletions leave no bytes behind
        await conn.execute(MESSAGES_TABLE)
        await conn.commit()
        yield MessageCache(conn, path)
    finally:
        await conn.close()


def _fields(message: Message) -> tuple[object, ...]:
    return tuple(getattr(message, name) for name in message.__struct_fields__)


class StreamConsumer:
    """`cdpd.outbox.consumers.Consumer`'s interface over the messages stream, for the identity
    stage: reads in stream-sequence order past `seq` (which the stage sets from its store's
    own position, the truth), and copies what it reads into the node's `MessageCache`.

    Caught up, it waits on a long fetch (up to `IDLE_WAIT_S`) of a headers-only consumer that
    starts past the stream's last sequence as last read: the server answers it as soon as a
    message is stored, so an idle stage asks the cluster nothing in between."""

    def __init__(self, js: JetStreamContext, layout: Layout, cache: MessageCache) -> None:
        self._js = js
        self._layout = layout
        self._cache = cache
        self.seq = 0
        self.end_seq = 0  # the stream's last sequence, as last asked
        self.new_messages = asyncio.Event()  # unused (see `wait`); kept for the interface
        self._waiter: JetStreamContext.PullSubscription | None = None
        self._waiter_from = 0  # the sequence the waiter delivers from

    async def start(self, from_seq: int = 0) -> int:
        self.seq = from_seq
        return from_seq

    async def read(self, limit: int) -> list[Message]:
        state = (await self._js.stream_info(self._layout.stream)).state
        self.end_seq = state.last_seq
        if state.first_seq > self.seq + 1:  # older than max_age_s: the stream dropped them
            log.warning("messages_expired_unread", after_seq=self.seq, first_seq=state.first_seq)
            self.seq = state.first_seq - 1
        rows, through = await read_range(
            self._js, self._layout, self.seq, min(limit, self.end_seq - self.seq)
        )
        messages = [message_of(seq, row) for seq, row in rows]
        await self._cache.add(messages)
        if not messages:
            self.seq = max(self.seq, through)  # only replayed dead letters in the range
        return messages

    async def wait(self, stop: asyncio.Event, poll_s: float) -> None:
        """Until a message is stored past the last one read, `stop` is set, or `IDLE_WAIT_S`
        passes (`poll_s` is for consumers that poll)."""
        if self.end_seq > self.seq:
            return
        await first_of(self._until_stored(), stop.wait())

    async def _until_stored(self) -> None:
        wanted_from = self.end_seq + 1
        if self._waiter is not None and self._waiter_from != wanted_from:
            await self._drop_waiter()
        if self._waiter is None:
            config = reading(
                DeliverPolicy.BY_START_SEQUENCE,
                start_seq=wanted_from,
                headers_only=True,
                inactive_s=60.0,
            )
            self._waiter = await self._js.pull_subscribe(
                self._layout.messages_subjects, stream=self._layout.stream, config=config
            )
            self._waiter_from = wanted_from
        try:
            [message] = await self._waiter.fetch(1, timeout=IDLE_WAIT_S)
        except TimeoutError:
            return  # nothing stored: the same waiter serves the next wait
        except Exception:
            await self._drop_waiter()  # deleted under it, or a lost link: a new one next time
            raise
        self._waiter_from = message.metadata.sequence.stream + 1

    async def _drop_waiter(self) -> None:
        if self._waiter is None:
            return
        waiter, self._waiter = self._waiter, None
        try:
            await forget(self._js, self._layout.stream, waiter)
        except Exception as exc:  # nats-py raises several unrelated types for one lost link
            log.warning("stream_waiter_left", error=repr(exc))

    async def close(self) -> None:
        await self._drop_waiter()


def position_in(path: Path, sql: str) -> int:
    """One integer read from a SQLite file (0 when the file or the row is missing)."""
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            row = conn.execute(sql).fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0]) if row and row[0] is not None else 0
