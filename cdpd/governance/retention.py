"""Keeping governance's tables bounded: blocked messages and violations are kept 30 days
(store.RETENTION_S), then deleted in chunks, each its own short writer operation."""

from __future__ import annotations

import asyncio
import functools

import aiosqlite
import structlog

from cdpd.clock import Clock
from cdpd.governance import store
from cdpd.model.timestamps import format_ms
from cdpd.outbox.writer import OutboxWriter

log = structlog.get_logger()
PRUNE_CHUNK = 1000


class GovernancePruner:
    def __init__(self, writer: OutboxWriter, clock: Clock, *, interval_s: float) -> None:
        self._writer = writer
        self._clock = clock
        self._interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.prune_once()
            except Exception:  # the outbox refused this time: the next pass catches up
                log.exception("governance_prune_failed")
            await self._clock.wait(stop, self._interval_s)

    async def prune_once(self) -> dict[str, int]:
        before = format_ms(self._clock.now_ms() - store.RETENTION_S * 1000)
        deleted = {
            table: await self._drain(table, before) for table in ("blocked_messages", "violations")
        }
        if any(deleted.values()):
            log.info("governance_pruned", **deleted)
        return deleted

    async def _drain(self, table: str, before: str) -> int:
        total = 0
        while True:
            count = await self._writer.transact(functools.partial(_prune, table, before))
            total += count
            if count < PRUNE_CHUNK:
                return total


async def _prune(table: str, before: str, conn: aiosqlite.Connection) -> int:
    sql = store.PRUNE[table]
    cursor = await conn.execute(sql, (before, PRUNE_CHUNK))
    return int(cursor.rowcount)
