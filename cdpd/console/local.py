"""The console's seams on the SQLite backend: people and sessions in the console's state file,
and every figure from the outbox (the flow counts, the delivery ledger, governance's tables)
and from the pipeline running in this process (the debugger's tap, the lanes, the warehouse
scheduler)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import aiosqlite

from cdpd.config import Config, Destination, engage_path
from cdpd.console import overview, state
from cdpd.console.debugger import Tap, Watcher
from cdpd.console.seams import (
    DestinationFigures,
    Feed,
    PrivacyData,
    ProfileFiles,
    ProfileStores,
    SourceFigures,
)
from cdpd.console.state import Person, Session
from cdpd.console.web import Refused
from cdpd.delivery import replay
from cdpd.delivery.service import Delivery
from cdpd.governance import store as governance_store
from cdpd.governance.store import SchemaField, ViolationSummary
from cdpd.identity.stage import IdentityStage
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.warehouse.scheduler import Scheduler


class SqliteState:
    """`ConsoleState` over the console's state file (`cdpd.console.state`)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def person(self, name: str) -> Person | None:
        return await state.person(self.conn, name)

    async def session(self, session_id: str) -> Session | None:
        return await state.session(self.conn, session_id)

    async def add_session(self, session_id: str, name: str, csrf_token: str, ttl_s: int) -> None:
        await state.add_session(self.conn, session_id, name, csrf_token, ttl_s)

    async def end_session(self, session_id: str) -> None:
        await state.end_session(self.conn, session_id)

    async def log_signin(self, name: str, address: str | None, *, succeeded: bool) -> None:
        await state.log_signin(self.conn, name, address, succeeded=succeeded)

    # -- what `cdpd users` does ----------------------------------------------------------------

    async def people(self) -> list[Person]:
        return await state.people(self.conn)

    async def add_person(self, name: str, password_hash: str, workspace: str, role: str) -> bool:
        if await state.person(self.conn, name) is not None:
            return False
        await self.conn.execute("BEGIN IMMEDIATE")
        await state.add_person(self.conn, name, password_hash)
        await state.set_role(self.conn, name, workspace, role)
        await self.conn.execute("COMMIT")
        return True

    async def set_role(self, name: str, workspace: str, role: str) -> bool:
        if await state.person(self.conn, name) is None:
            return False
        await state.set_role(self.conn, name, workspace, role)
        return True

    async def set_password(self, name: str, password_hash: str) -> bool:
        return await state.set_password(self.conn, name, password_hash)

    async def remove_person(self, name: str) -> bool:
        return await state.remove_person(self.conn, name)


class _TapFeed:
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    async def next(self, timeout_s: float) -> list[OutboxRow]:
        watcher = self.watcher
        if not watcher.messages:
            try:
                await asyncio.wait_for(watcher.ready.wait(), timeout_s)
            except TimeoutError:
                return []
        watcher.ready.clear()
        taken = list(watcher.messages)
        watcher.messages.clear()
        return taken


class LocalProfiles:
    """`ProfileStores` of this process: its identity stage's reader and Engage's file (the
    config read at each use: a reload replaces it)."""

    def __init__(self, identity: IdentityStage | None, config_of: Callable[[], Config]) -> None:
        self._identity = identity
        self._config_of = config_of

    @property
    def resolved(self) -> bool:
        return self._identity is not None

    def files(self) -> ProfileFiles:
        reader = self._identity.reader if self._identity is not None else None
        return ProfileFiles(reader, engage_path(self._config_of()))


class LocalData:
    """`ConsoleData` over the outbox and the pipeline of this process. The delivery and the
    warehouses are read at each use: a reload replaces them."""

    unavailable: Mapping[str, str] = {}

    def __init__(
        self,
        reader: aiosqlite.Connection,
        tap: Tap,
        delivery: Callable[[], Delivery],
        warehouses: Callable[[], Scheduler | None],
        privacy: PrivacyData,
        profiles: ProfileStores,
    ) -> None:
        self.reader = reader
        self.privacy = privacy
        self.profiles = profiles
        self.tap = tap
        self._delivery = delivery
        self._warehouses = warehouses

    @asynccontextmanager
    async def watch(self, source: str, capacity: int) -> AsyncIterator[Feed]:
        watcher = self.tap.watch(source, capacity)
        try:
            yield _TapFeed(watcher)
        finally:
            self.tap.unwatch(watcher)

    async def source_figures(self, source: str, window: str) -> SourceFigures:
        totals = await overview.totals(self.reader, "source", [source], overview.span(window))
        chart = await overview.series(
            self.reader, "source", source, ["received", "rejected", "blocked"], window
        )
        return SourceFigures(
            received={r: c for (m, r), c in totals.items() if m == "received"},
            rejected=overview.by_count(totals, "rejected"),
            blocked=overview.by_count(totals, "blocked"),
            chart=chart,
        )

    async def violations(self, source: str, since_ms: int) -> list[ViolationSummary]:
        return await governance_store.summarize_violations(
            self.reader, source=source, event=None, since=format_ms(since_ms)
        )

    async def schema(self, source: str) -> list[SchemaField]:
        return await governance_store.source_schema(self.reader, source)

    async def destination_figures(
        self, destination: Destination, upstream: list[str], window: str
    ) -> DestinationFigures:
        reader = self.reader
        period = overview.span(window)
        own = await overview.totals(reader, "destination", [destination.name], period)
        before = await overview.totals(reader, "source", upstream, period)
        ledger = await overview.ledger(reader, destination.name)
        lane = self._delivery().lanes.get(destination.name)
        since_ms = now_ms() - overview.WINDOWS_S[window] * 1000
        chart = await overview.series(
            reader, "destination", destination.name, ["delivered", "retried", "failed"], window
        )
        counts: dict[str, int | None] = {
            "received": own["received", ""],
            "failed_on_ingest": sum(c for (m, _), c in before.items() if m == "rejected"),
            "filtered_at_source": sum(c for (m, _), c in before.items() if m == "blocked"),
            "filtered_at_destination": sum(c for (m, _), c in own.items() if m == "filtered"),
            "pending_retry": ledger.pending_retry,
            "failed": own["failed", ""],
            "delivered": own["delivered", ""],
            "retried": own["retried", ""],
        }
        return DestinationFigures(
            counts=counts,
            filtered=overview.by_count(own, "filtered"),
            p95_ms=await overview.p95_ms(reader, destination.name, period),
            backlog=ledger.behind,
            circuit=lane.circuit.state if lane is not None else "not running",
            errors=await overview.errors(reader, destination.name, since_ms),
            dead=ledger.dead,
            dead_total=ledger.dead_count,
            chart=chart,
        )

    async def payload(self, message_id: str, sources: list[str]) -> str | None:
        return await overview.payload(self.reader, message_id, sources)

    async def replay_dead(self, destination: Destination) -> int:
        delivery = self._delivery()
        count = await replay.replay_dead(delivery.store, destination)
        lane = delivery.lanes.get(destination.name)
        if lane is not None:
            lane.wake()
        return count

    async def retry(self, destination: Destination) -> int:
        delivery = self._delivery()
        count = await delivery.store.retry_now(destination.name, format_ms(now_ms()))
        lane = delivery.lanes.get(destination.name)
        if lane is not None:
            lane.circuit.succeeded()
            lane.wake()
        return count

    async def warehouse_holder(self, warehouse: str) -> str | None:
        return None  # this process loads every warehouse

    async def sync_now(self, warehouse: str) -> str:
        scheduler = self._warehouses()
        if scheduler is None:
            raise Refused(503, "Warehouse syncs are not running in this process.")
        result = await scheduler.sync_now(warehouse)
        return f"sync {result.status}: {result.messages} messages"
