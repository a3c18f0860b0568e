"""The outbox consumer seam: in order, a durable position moved with the consumer's effects,
woken by commits, and retention that keeps what it has not passed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from cdpd.delivery.retention import oldest_needed_seq
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import now_ms
from cdpd.outbox import schema
from cdpd.outbox.consumers import Consumer, lags
from cdpd.outbox.writer import OutboxWriter


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[OutboxWriter]:
    async with schema.connect(tmp_path / "outbox.sqlite3") as conn:
        outbox = OutboxWriter(
            conn, commit_max_rows=1000, dedup_window_s=0, full_retry_after_s=1, clock_s=lambda: 0
        )
        await outbox.start()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(outbox.run())
            try:
                yield outbox
            finally:
                outbox.close()


async def append(writer: OutboxWriter, *ids: str) -> None:
    rows = [
        OutboxRow(m, "web", "track", "E", "u1", None, "2026-01-01T00:00:00.000Z", "{}") for m in ids
    ]
    await writer.append(rows, [], now_ms())


def consumer(writer: OutboxWriter, tmp_path: Path) -> Consumer:
    made = Consumer(
        "identity",
        "identity",
        tmp_path / "outbox.sqlite3",
        writer.transact,
        lambda: writer.last_seq,
    )
    writer.on_messages(made.new_messages)
    return made


async def test_reads_in_order_and_the_position_survives_a_new_instance(
    writer: OutboxWriter, tmp_path: Path
) -> None:
    await append(writer, "m1", "m2", "m3")
    first = consumer(writer, tmp_path)
    assert await first.start() == 0
    batch = await first.read(2)
    assert [m.message_id for m in batch] == ["m1", "m2"]
    await first.advance(batch[-1].seq)
    await first.close()
    again = consumer(writer, tmp_path)
    assert await again.start() == 2
    assert [m.message_id for m in await again.read(10)] == ["m3"]
    await again.close()


async def test_the_position_moves_only_with_its_effects(
    writer: OutboxWriter, tmp_path: Path
) -> None:
    await append(writer, "m1")
    reader = consumer(writer, tmp_path)
    await reader.start()

    async def failing(conn: aiosqlite.Connection) -> None:
        await conn.execute("CREATE TABLE profiles_seen (seq INTEGER)")
        raise RuntimeError("a bug in the stage")

    with pytest.raises(RuntimeError):
        await reader.advance(1, failing)
    assert await reader.start() == 0  # rolled back with the effects

    async def effects(conn: aiosqlite.Connection) -> None:
        await conn.execute("CREATE TABLE profiles_seen (seq INTEGER)")

    await reader.advance(1, effects)
    assert await reader.start() == 1
    await reader.close()


async def test_a_commit_wakes_it_and_retention_keeps_what_it_has_not_passed(
    writer: OutboxWriter, tmp_path: Path
) -> None:
    reader = consumer(writer, tmp_path)
    await reader.start()
    stop = asyncio.Event()
    waiting = asyncio.create_task(reader.wait(stop, poll_s=30))
    await asyncio.sleep(0)
    await append(writer, "m1", "m2")
    async with asyncio.timeout(30):
        await waiting
    assert await writer.transact(oldest_needed_seq) == 1
    await reader.advance(2)
    assert await writer.transact(oldest_needed_seq) == 3
    (lag,) = await writer.transact(lags)
    assert (lag.name, lag.messages_behind) == ("identity", 0)
    await reader.close()
