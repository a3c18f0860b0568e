"""Governance's background work, one task: writing the source schema's counts about once a
second, and pruning blocked messages and violations past their retention."""

from __future__ import annotations

import asyncio
import functools

import structlog

from cdpd.clock import Clock
from cdpd.governance import store
from cdpd.governance.retention import GovernancePruner
from cdpd.governance.stage import Governance
from cdpd.outbox.writer import OutboxWriter
from cdpd.privacy import store as privacy_store

log = structlog.get_logger()
SCHEMA_FLUSH_INTERVAL_S = 1.0


class GovernanceService:
    def __init__(
        self,
        writer: OutboxWriter,
        governance: Governance,
        clock: Clock,
        *,
        prune_interval_s: float,
        flush_interval_s: float = SCHEMA_FLUSH_INTERVAL_S,
    ) -> None:
        self._writer = writer
        self._governance = governance
        self._clock = clock
        self._prune_interval_s = prune_interval_s
        self._flush_interval_s = flush_interval_s
        self.pruner = GovernancePruner(writer, clock)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; then writes what was counted last, while the writer still runs."""
        next_prune_ms = self._clock.now_ms()
        while not stop.is_set():
            await self.flush()
            if self._clock.now_ms() >= next_prune_ms:
                try:
                    await self.pruner.prune_once()
                except Exception:  # the outbox refused this time: the next pass catches up
                    log.exception("governance_prune_failed")
                next_prune_ms = self._clock.now_ms() + int(self._prune_interval_s * 1000)
            await self._clock.wait(stop, self._flush_interval_s)
        await self.flush()

    async def flush(self) -> int:
        """Write the schema counts and the privacy inbox's fields gathered since the last
        flush, and read the privacy inventory again; returns the rows written."""
        written = 0
        privacy = self._governance.privacy
        for name, rows, upsert in (
            ("schema_counts", self._governance.schema.take_rows(), store.upsert_schema),
            ("privacy_inbox", privacy.take_inbox_rows(), privacy_store.upsert_inbox),
        ):
            if not rows:
                continue
            try:
                written += await self._writer.transact(functools.partial(upsert, rows))
            except Exception:  # bookkeeping only: losing it must not stop ingest
                log.exception(f"{name}_write_failed", rows=len(rows))
        try:
            await self._writer.transact(privacy.load_inventory)
        except Exception:  # the inventory in force stays; the next pass tries again
            log.exception("privacy_inventory_read_failed")
        return written
