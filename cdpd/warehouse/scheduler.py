"""The periodic sync of each configured warehouse, one supervised service (`run(stop)`) each.

A warehouse is synced when the daemon starts if its last recorded sync is older than
`interval_s` (or there is none), then every `interval_s`. Setting `stop` lets a sync finish the
batch it is in (that batch commits) and ends the service; a cancelled sync rolls its batch back.
A failed sync is recorded as a failure report; anything else that fails restarts the schedule
(under `cdpd.supervise`), which then waits for the next sync that is due.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import structlog

from cdpd.clock import Clock, SystemClock
from cdpd.config import Config, Warehouse
from cdpd.outbox.continuity import SequenceGap
from cdpd.warehouse import loader
from cdpd.warehouse.report import SyncReport
from cdpd.warehouse.sinks import open_sink

log = structlog.get_logger("cdpd.warehouse")


class Scheduler:
    def __init__(
        self,
        config: Config,
        *,
        clock_s: Callable[[], float] = time.time,
        clock: Clock | None = None,
        on_position: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self._config = config
        # Told each warehouse's position after a sync (the outbox lists it among its consumers).
        self._on_position = on_position
        self._clock_s = clock_s
        self._clock = clock or SystemClock()
        self._locks = {w.name: asyncio.Lock() for w in config.warehouses}
        self._completed = {w.name: asyncio.Condition() for w in config.warehouses}
        self.reports: dict[str, list[SyncReport]] = {w.name: [] for w in config.warehouses}
        # Warehouses found ahead of the outbox: nothing is loaded into them until rewound.
        self.gaps: dict[str, SequenceGap] = {}

    @property
    def warehouses(self) -> list[Warehouse]:
        return list(self._config.warehouses)

    def schedules(self) -> list[Schedule]:
        """One service per configured warehouse."""
        return [Schedule(self, warehouse) for warehouse in self._config.warehouses]

    async def run(self, warehouse: Warehouse, stop: asyncio.Event) -> None:
        """Sync `warehouse` on its interval until `stop` is set."""
        await self.check_sequence(warehouse)
        delay_s = await self._first_delay_s(warehouse)
        while not await self._clock.wait(stop, delay_s):
            await self.sync_now(warehouse.name, stop)
            delay_s = warehouse.interval_s

    async def sync_now(self, name: str, stop: asyncio.Event | None = None) -> SyncReport:
        """One sync of the named warehouse; syncs of one warehouse in this process take turns.
        Setting `stop` ends the sync after the batch it is in."""
        warehouse = next(w for w in self._config.warehouses if w.name == name)
        should_stop = stop.is_set if stop is not None else _never
        async with self._locks[name]:
            try:
                gap = await self.check_sequence(warehouse)
                if gap is not None:
                    report = SyncReport(
                        warehouse=name, status="failure", started_at="", error=gap.message
                    )
                else:
                    report = await loader.sync(self._config, warehouse, should_stop=should_stop)
            except Exception:
                log.exception("warehouse_sync_crashed", warehouse=name)
                report = SyncReport(warehouse=name, status="failure", started_at="", error="crash")
        if self._on_position is not None and report.position is not None:
            try:
                await self._on_position(name, report.position)
            except Exception:  # the mirror is for people to read; the warehouse holds the truth
                log.warning("warehouse_position_not_mirrored", warehouse=name, exc_info=True)
        async with self._completed[name]:
            self.reports[name].append(report)
            self._completed[name].notify_all()
        return report

    @asynccontextmanager
    async def between_syncs(self, name: str) -> AsyncIterator[None]:
        """Hold this process's syncs of the named warehouse off (a sync in progress finishes
        first): a deletion runs here, so no sync can load what it read before."""
        async with self._locks[name]:
            yield

    async def check_sequence(self, warehouse: Warehouse) -> SequenceGap | None:
        """Whether `warehouse` is ahead of the outbox (at start-up and before each sync); an
        unreachable warehouse is checked again before its sync."""
        try:
            gap = await loader.sequence_gap(self._config, warehouse)
        except loader.SYNC_ERRORS as exc:
            log.warning("warehouse_unreachable", warehouse=warehouse.name, error=str(exc))
            return self.gaps.get(warehouse.name)
        if gap is None:
            self.gaps.pop(warehouse.name, None)
            return None
        self.gaps[warehouse.name] = gap
        log.error(
            gap.code,
            warehouse=warehouse.name,
            warehouse_position=gap.warehouse_position,
            outbox_seq=gap.outbox_seq,
            rewind_to=gap.rewind_to,
            message=gap.message,
        )
        return gap

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


class Schedule:
    """One warehouse's periodic sync, as a service for `cdpd.supervise`."""

    def __init__(self, scheduler: Scheduler, warehouse: Warehouse) -> None:
        self._scheduler = scheduler
        self.warehouse = warehouse

    @property
    def name(self) -> str:
        return f"warehouse-{self.warehouse.name}"

    async def run(self, stop: asyncio.Event) -> None:
        await self._scheduler.run(self.warehouse, stop)


def _never() -> bool:
    return False
