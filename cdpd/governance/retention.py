"""Keeping governance's tables bounded: blocked messages and violations are kept 30 days
(store.RETENTION_S), then deleted in chunks, each its own short writer operation."""

from __future__ import annotations

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
    """Run by governance/service.py every `delivery.prune_interval_s`."""

    def __init__(self, writer: OutboxWriter, clock: Clock) -> None:
        self._writer = writer
        self._clock = clock

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
