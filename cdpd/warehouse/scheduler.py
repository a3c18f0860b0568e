"""The periodic sync of each configured warehouse, run as tasks of the daemon's TaskGroup.

A warehouse is synced when the daemon starts if its last recorded sync is older than
`interval_s` (or there is none), then every `interval_s`. Stopping lets a sync finish the batch
it is in (that batch commits) and ends the task; a cancelled sync rolls its batch back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime

import structlog

from cdpd.config import Config, Warehouse
from cdpd.warehouse import loader
from cdpd.warehouse.report import SyncReport
from cdpd.warehouse.sinks import open_sink

log = structlog.get_logger("cdpd.warehouse")


class Scheduler:
    def __init__(self, config: Config, *, clock_s: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock_s = clock_s
        self._stop = asyncio.Event()
        self._locks = {w.name: asyncio.Lock() for w in config.warehouses}
        self._completed = {w.name: asyncio.Condition() for w in config.warehouses}
        self.reports: dict[str, list[SyncReport]] = {w.name: [] for w in config.warehouses}

    @property
    def warehouses(self) -> list[Warehouse]:
        return list(self._config.warehouses)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, warehouse: Warehouse) -> None:
        """Sync `warehouse` on its interval until `stop()`."""
        delay_s = await self._first_delay_s(warehouse)
        while not await self._stopped_within(delay_s):
            await self.sync_now(warehouse.name)
            delay_s = warehouse.interval_s

    async def sync_now(self, name: str) -> SyncReport:
        """One sync of the named warehouse; syncs of one warehouse in this process take turns."""
        warehouse = next(w for w in self._config.warehouses if w.name == name)
        async with self._locks[name]:
            try:
                report = await loader.sync(self._config, warehouse, should_stop=self._stop.is_set)
            except Exception:
                log.exception("warehouse_sync_crashed", warehouse=name)
                report = SyncReport(warehouse=name, status="failure", started_at="", error="crash")
        async with self._completed[name]:
            self.reports[name].append(report)
            self._completed[name].notify_all()
        return report

    async def wait_for_syncs(self, name: str, count: int) -> list[SyncReport]:
        """Wait until `count` syncs of the named warehouse have finished in this process."""
        async with self._completed[name]:
            await self._completed[name].wait_for(lambda: len(self.reports[name]) >= count)
            return list(self.reports[name])

    async def _first_delay_s(self, warehouse: Warehouse) -> float:
        try:
            async with open_sink(self._config, warehouse) as sink:
                recent = await sink.recent_syncs(1)
        except loader.SYNC_ERRORS as exc:
            log.warning("warehouse_unreachable", warehouse=warehouse.name, error=str(exc))
            return 0.0
        if not recent or not recent[0].finished_at:
            return 0.0
        finished = datetime.fromisoformat(recent[0].finished_at.replace("Z", "+00:00"))
        age_s = self._clock_s() - finished.timestamp()
        return max(0.0, warehouse.interval_s - age_s)

    async def _stopped_within(self, delay_s: float) -> bool:
        if delay_s > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay_s)
        return self._stop.is_set()
