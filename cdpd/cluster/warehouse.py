"""Warehouse loads on the JetStream backend: each warehouse is loaded by one node at a time,
the holder of its lease, from the messages stream.

A batch is loaded the way the SQLite backend's loader does it (`cdpd.warehouse.loader`): inside
the warehouse's load transaction, which holds the warehouse's own load lock, read the position
stored in the warehouse (a stream sequence here), take the messages after it, map and plan
them, write them and advance the position, commit. The position lives in the warehouse and
moves in the load's transaction, so a new leader continues exactly where the old one stopped,
and a batch is never loaded twice, not even by a former leader that has not yet noticed it
lost its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from cdpd.clock import Clock
from cdpd.cluster.layout import DESTINATION, LOADED_IN, Layout, names_in, warehouse_lease_key
from cdpd.cluster.lease import RENEW_EVERY_S, Lease, lead
from cdpd.cluster.ordered import read_range
from cdpd.cluster.warehouse_sync import ALREADY_SYNCING, STARTED, SYNCED, SyncAnswer
from cdpd.cluster.warehouse_sync import encode as encode_answer
from cdpd.config import Config, Warehouse
from cdpd.model.rows import OutboxRow
from cdpd.privacy.controls import Inventory, PathControls
from cdpd.privacy.portal import warehouse_controls
from cdpd.warehouse.loader import SYNC_ERRORS
from cdpd.warehouse.mapping import Mapper, UnreadableMessage
from cdpd.warehouse.naming import schema_name
from cdpd.warehouse.plan import plan_load
from cdpd.warehouse.report import SyncReport
from cdpd.warehouse.sinks import Load, Sink, open_sink
from cdpd.warehouse.values import utc_text

if TYPE_CHECKING:
    from cdpd.cluster.node import NodeParts

log = structlog.get_logger("cdpd.warehouse")

BATCH_MESSAGES = 10_000
_decoder = msgspec.json.Decoder()


def lease_key(warehouse: str) -> str:
    return warehouse_lease_key(warehouse)


async def read_after(
    js: JetStreamContext, layout: Layout, after_seq: int, count: int, warehouse: str
) -> tuple[list[tuple[int, OutboxRow]], int]:
    """The messages among the next `count` after stream sequence `after_seq` that `warehouse`
    has to load, in order, with their sequences, and the last sequence read."""
    keep = functools.partial(_to_load, warehouse=warehouse)
    return await read_range(js, layout, after_seq, count, keep)


def _to_load(headers: dict[str, str], warehouse: str) -> bool:
    """Not a dead letter replayed for one destination (`Cdpd-Destination`, cdpd/cluster/dead.py:
    loaded when it was first accepted), nor a message imported from a SQLite outbox that this
    warehouse had loaded from there (`Cdpd-Loaded-In`)."""
    if DESTINATION in headers:
        return False
    loaded_in = headers.get(LOADED_IN)
    return loaded_in is None or warehouse not in names_in(loaded_in)


async def load_batch(
    js: JetStreamContext,
    layout: Layout,
    sink: Sink,
    warehouse: Warehouse,
    end_seq: int,
    controls: PathControls | None = None,
) -> tuple[int, int] | None:
    """One batch in one warehouse transaction: (messages, last seq), or None when the
    warehouse has everything up to `end_seq`. The position passes the messages skipped too.
    `controls`: the warehouse's privacy controls."""
    async with sink.load() as load:
        position = await load.position()
        count = min(BATCH_MESSAGES, end_seq - position)
        rows, last_seq = await read_after(js, layout, position, count, warehouse.name)
        if last_seq <= position:
            return None
        if rows:
            await _write(load, sink, warehouse, rows, controls)
        await load.set_position(last_seq)
    return len(rows), last_seq


async def _write(
    load: Load,
    sink: Sink,
    warehouse: Warehouse,
    rows: list[tuple[int, OutboxRow]],
    controls: PathControls | None,
) -> None:
    mapper = Mapper(loaded_at=utc_text(datetime.now(UTC)))
    for _, row in rows:
        try:
            message = _decoder.decode(row.payload)
        except msgspec.DecodeError as exc:
            unreadable = UnreadableMessage(
                row.message_id, row.type, row.event, row.received_at, row.payload
            )
            mapper.add_unreadable(row.source, unreadable, str(exc))
            continue
        if type(message) is dict:
            if controls is not None:
                controls.apply(message)
            mapper.add(row.source, message)
    mapped = mapper.batch()
    mapped.nul_text = any("\\u0000" in row.payload for _, row in rows)
    schemas = frozenset(schema_name(row.source) for _, row in rows)
    plan = plan_load(
        mapped,
        await load.catalog(schemas),
        max_columns=warehouse.max_columns,
        encode_timestamp=sink.encode_timestamp,
    )
    await load.apply(plan)


async def sync(
    config: Config,
    warehouse: Warehouse,
    js: JetStreamContext,
    layout: Layout,
    should_stop: Callable[[], bool],
    classes: Mapping[str, str] | None = None,
) -> SyncReport:
    """Load what the stream holds now, batch by batch, until done or `should_stop()`, with
    the warehouse's privacy controls over the inventory `classes` as the sync starts."""
    report = SyncReport(warehouse=warehouse.name, started_at=utc_text(datetime.now(UTC)))
    controls = warehouse_controls(config.privacy, warehouse.name, dict(classes or {}))
    try:
        end_seq = (await js.stream_info(layout.stream)).state.last_seq
        async with open_sink(config, warehouse) as sink:
            report.position = await sink.position()
            while not should_stop():
                loaded = await load_batch(js, layout, sink, warehouse, end_seq, controls)
                if loaded is None:
                    break
                messages, report.position = loaded
                report.messages += messages
                log.info("warehouse_batch_loaded", warehouse=warehouse.name, last_seq=loaded[1])
            report.finished_at = utc_text(datetime.now(UTC))
            await sink.record_sync(report)
    except (*SYNC_ERRORS, TimeoutError) as exc:
        report.status = "partial" if report.messages else "failure"
        report.error = f"{type(exc).__name__}: {exc}"
        log.error("warehouse_sync_failed", warehouse=warehouse.name, error=report.error)
    return report


class WarehouseLeader:
    """One warehouse on one node: wait for its lease, then sync every `interval_s` while the
    lease is held, and whenever a node asks (`cdpd.cluster.warehouse_sync`); one sync at a
    time. A service for `cdpd.supervise` (`run(stop)`)."""

    def __init__(
        self,
        config: Config,
        warehouse: Warehouse,
        js: JetStreamContext,
        layout: Layout,
        lease: Lease,
        clock: Clock,
        inventory: Inventory | None = None,
        client: Client | None = None,  # with it, the leader answers requests to sync now
    ) -> None:
        self._config = config
        self._inventory = inventory or Inventory()  # the node's, following the cluster's
        self.warehouse = warehouse
        self._js = js
        self._layout = layout
        self.lease = lease
        self._clock = clock
        self._client = client
        self._syncing = asyncio.Lock()
        self.reports: list[SyncReport] = []

    async def run(self, stop: asyncio.Event) -> None:
        await lead(self.lease, self._clock, stop, functools.partial(self._lead, stop))

    async def _lead(self, stop: asyncio.Event, should_stop: Callable[[], bool]) -> None:
        async with asyncio.TaskGroup() as answers, self._answering(answers, should_stop):
            while not should_stop():
                async with self._syncing:
                    await self._sync(should_stop)
                waited_s = 0.0
                while waited_s < self.warehouse.interval_s and not should_stop():
                    step_s = min(RENEW_EVERY_S, self.warehouse.interval_s - waited_s)
                    await self._clock.wait(stop, step_s)
                    waited_s += step_s

    async def _sync(self, should_stop: Callable[[], bool]) -> SyncReport:
        """One sync; its caller holds `_syncing`."""
        report = await sync(
            self._config,
            self.warehouse,
            self._js,
            self._layout,
            should_stop,
            self._inventory.classes,
        )
        self.reports.append(report)
        return report

    @asynccontextmanager
    async def _answering(
        self, answers: asyncio.TaskGroup, should_stop: Callable[[], bool]
    ) -> AsyncIterator[None]:
        """While the block runs, requests to sync now are answered, each in a task of
        `answers` (so a request during a sync finds it running)."""
        if self._client is None:
            yield
            return

        async def asked(msg: Msg) -> None:
            answers.create_task(self._answer(msg, should_stop))

        subject = self._layout.warehouse_sync_subject(self.warehouse.name)
        requests = await self._client.subscribe(subject, cb=asked)
        try:
            yield
        finally:
            with contextlib.suppress(NatsError):  # a closed connection listens to nothing
                await requests.unsubscribe()

    async def _answer(self, msg: Msg, should_stop: Callable[[], bool]) -> None:
        """Sync now if this node still holds the lease (read back from the cluster) and no
        sync runs; a node that lost it stays silent, leaving the answer to the holder."""
        try:
            holding = await self.lease.confirmed()
        except (NatsError, TimeoutError) as exc:
            log.warning(
                "warehouse_sync_not_answered", warehouse=self.warehouse.name, error=repr(exc)
            )
            return
        if not msg.reply or should_stop() or not holding:
            return
        node = self.lease.holder
        if self._syncing.locked():
            await self._tell(msg.reply, SyncAnswer(state=ALREADY_SYNCING, node=node))
            return
        async with self._syncing:  # taken before any await: the next request finds it taken
            await self._tell(msg.reply, SyncAnswer(state=STARTED, node=node))
            log.info("warehouse_sync_asked", warehouse=self.warehouse.name)
            report = await self._sync(should_stop)
        await self._tell(msg.reply, SyncAnswer(state=SYNCED, node=node, report=report))

    async def _tell(self, reply: str, answer: SyncAnswer) -> None:
        assert self._client is not None
        try:
            await self._client.publish(reply, encode_answer(answer))
        except NatsError as exc:  # the asker waits no longer than its bound anyway
            log.warning(
                "warehouse_sync_answer_lost", warehouse=self.warehouse.name, error=repr(exc)
            )


@asynccontextmanager
async def warehouses_stage(parts: NodeParts) -> AsyncIterator[list[WarehouseLeader]]:
    """Every configured warehouse's leader service, stopped (their batch committed or rolled
    back, their leases released) when the block exits."""
    kv = await parts.js.key_value(parts.layout.leases_bucket)
    leaders = [
        WarehouseLeader(
            parts.config,
            warehouse,
            parts.js,
            parts.layout,
            Lease(kv, lease_key(warehouse.name), parts.node_name),
            parts.clock,
            parts.privacy.inventory,
            parts.client,
        )
        for warehouse in parts.config.warehouses
    ]
    stop = asyncio.Event()
    running = [
        parts.tasks.create_task(
            parts.supervised(f"warehouse-{leader.warehouse.name}", leader.run, stop),
            name=f"warehouse-{leader.warehouse.name}",
        )
        for leader in leaders
    ]
    try:
        yield leaders
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
