"""Keeping the outbox's size bounded: ledger rows delivered after a retry, after
`delivered_retention_s`; messages (the archive replay reads), dead ledger rows and rejects after
`archive_retention_s`.

Deletes go in chunks of PRUNE_CHUNK rows, each its own short writer operation, so ingest keeps
committing in between. A message is kept while any consumer has not passed it (a lane, a replay
job), a ledger row (waiting or dead) needs it, or a warehouse has not loaded it yet.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import aiosqlite
import structlog

from cdpd.clock import Clock
from cdpd.config import DeliveryConfig
from cdpd.delivery import action_outcomes
from cdpd.model.timestamps import format_ms
from cdpd.outbox import consumers
from cdpd.outbox.writer import OutboxWriter

log = structlog.get_logger()

PRUNE_CHUNK = 1000


class Pruner:
    def __init__(
        self,
        writer: OutboxWriter,
        config: DeliveryConfig,
        clock: Clock,
        *,
        dedup_window_s: int,
        warehouse_position: Callable[[], Awaitable[int | None]] | None = None,
    ) -> None:
        self._writer = writer
        self._config = config
        self._clock = clock
        # The highest seq every warehouse has loaded (None: no warehouse): nothing above goes.
        self._warehouse_position = warehouse_position
        # Messages are also the deduplication window's memory: keep them at least that long.
        self._message_retention_s = max(config.archive_retention_s, dedup_window_s)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.prune_once()
            except Exception:  # the outbox refused this time: the next pass catches up
                log.exception("prune_failed")
            await self._clock.wait(stop, self._config.prune_interval_s)

    async def prune_once(self) -> dict[str, int]:
        """One pass over everything past its retention; returns rows deleted, per kind."""
        now_ms = self._clock.now_ms()
        delivered_before = format_ms(now_ms - self._config.delivered_retention_s * 1000)
        archive_before = format_ms(now_ms - self._config.archive_retention_s * 1000)
        messages_before = format_ms(now_ms - self._message_retention_s * 1000)
        deleted = {
            "delivered": await self._drain(
                functools.partial(prune_finished, state="delivered", before_at=delivered_before)
            ),
            "dead": await self._drain(
                functools.partial(prune_finished, state="dead", before_at=archive_before)
            ),
            "messages": await self._drain(
                functools.partial(
                    prune_messages,
                    below_seq=await self._prunable_below(),
                    before_at=messages_before,
                )
            ),
            "rejects": await self._drain(
                functools.partial(prune_rejects, before_at=archive_before)
            ),
            "delivered_actions": await self._writer.transact(
                functools.partial(
                    action_outcomes.prune,
                    before_at=format_ms(now_ms - action_outcomes.KEEP_AT_LEAST_S * 1000),
                )
            ),
        }
        if any(deleted.values()):
            log.info("outbox_pruned", **deleted)
        return deleted

    async def _drain(self, chunk: Callable[[aiosqlite.Connection], Awaitable[int]]) -> int:
        total = 0
        while True:
            count = await self._writer.transact(chunk)
            total += count
            if count < PRUNE_CHUNK:
                return total

    async def _prunable_below(self) -> int:
        """Messages below this seq are needed by no delivery, routing position or warehouse."""
        needed = await self._writer.transact(oldest_needed_seq)
        below = self._writer.last_seq + 1 if needed is None else needed
        if self._warehouse_position is not None:
            loaded = await self._warehouse_position()
            if loaded is not None:
                below = min(below, loaded + 1)
        return below


async def prune_finished(conn: aiosqlite.Connection, state: str, before_at: str) -> int:
    """Delete up to PRUNE_CHUNK ledger rows finished (`delivered` or `dead`) before
    `before_at`, with their attempts; returns how many."""
    chosen = "SELECT id FROM deliveries WHERE state = ? AND finished_at < ? ORDER BY id LIMIT ?"
    params = (state, before_at, PRUNE_CHUNK)
    await conn.execute(f"DELETE FROM attempts WHERE delivery_id IN ({chosen})", params)
    cursor = await conn.execute(f"DELETE FROM deliveries WHERE id IN ({chosen})", params)
    return int(cursor.rowcount)


async def oldest_needed_seq(conn: aiosqlite.Connection) -> int | None:
    """The lowest seq a consumer or a ledger row still needs (None: nothing does); the partial
    index deliveries_needed_seq answers the ledger's part without a scan."""
    rows = list(
        await conn.execute_fetchall(
            "SELECT min(seq) FROM deliveries WHERE state IN ('pending', 'in_flight', 'retrying',"
            " 'dead')"
        )
    )
    needed = [rows[0][0]] if rows and rows[0][0] is not None else []
    consumed = await consumers.oldest_needed_seq(conn)
    if consumed is not None:
        needed.append(consumed)
    return min(needed) if needed else None


async def prune_messages(conn: aiosqlite.Connection, below_seq: int, before_at: str) -> int:
    """Delete up to PRUNE_CHUNK messages older than `before_at` and below `below_seq`."""
    cursor = await conn.execute(
        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages"
        " WHERE seq < ? AND received_at < ? ORDER BY seq LIMIT ?)",
        (below_seq, before_at, PRUNE_CHUNK),
    )
    return int(cursor.rowcount)


async def prune_rejects(conn: aiosqlite.Connection, before_at: str) -> int:
    cursor = await conn.execute(
        "DELETE FROM rejects WHERE id IN (SELECT id FROM rejects WHERE received_at < ?"
        " ORDER BY id LIMIT ?)",
        (before_at, PRUNE_CHUNK),
    )
    return int(cursor.rowcount)
