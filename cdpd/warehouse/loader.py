"""One sync: read the outbox in order, in batches, and load each batch in one transaction.

Each batch runs inside the sink's load transaction, which holds the warehouse's load lock:
read the position stored in the warehouse, read the next outbox messages after it (read-only,
ordered by seq), map and plan them, write tables, columns, rows and discards, advance the
position, commit. A crash anywhere before the commit leaves the warehouse as it was, and the
next sync loads the same messages again; two syncs take turns, and the second finds the
position already advanced. A sync loads up to the outbox's last message when it started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import msgspec
import structlog

from cdpd.config import Config, Warehouse
from cdpd.outbox import schema as outbox_schema
from cdpd.warehouse.mapping import MappedBatch, Mapper
from cdpd.warehouse.naming import schema_name
from cdpd.warehouse.plan import Catalog, LoadPlan, plan_load
from cdpd.warehouse.report import SyncReport
from cdpd.warehouse.sinks import Sink, open_sink
from cdpd.warehouse.values import utc_text

log = structlog.get_logger("cdpd.warehouse")

BATCH_MESSAGES = 10_000
READ_BATCH = """
SELECT seq, source, payload FROM messages WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?
"""
LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM messages"

_decoder = msgspec.json.Decoder()


class BatchResult(msgspec.Struct, frozen=True):
    first_seq: int
    last_seq: int
    messages: int
    rows: dict[str, int]
    discards: int


BatchHook = Callable[[BatchResult], Awaitable[None]]


class NoOutbox(Exception):
    """There is no outbox file to read yet."""


# What a sync reports as its error rather than raising: the databases and the files.
SYNC_ERRORS = (OSError, aiosqlite.Error, asyncpg.PostgresError, asyncpg.InterfaceError, NoOutbox)


async def sync(
    config: Config,
    warehouse: Warehouse,
    *,
    batch_messages: int = BATCH_MESSAGES,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: BatchHook | None = None,
) -> SyncReport:
    """Load everything the outbox holds now; errors end up in the report, not raised."""
    report = SyncReport(warehouse=warehouse.name, started_at=_now_text())
    bound = log.bind(warehouse=warehouse.name)
    try:
        async with open_sink(config, warehouse) as sink:
            await _load_all(config, warehouse, sink, report, batch_messages, should_stop, on_batch)
            await _record(sink, report, bound)
    except SYNC_ERRORS as exc:
        _fail(report, exc, bound)
    return report


async def _load_all(
    config: Config,
    warehouse: Warehouse,
    sink: Sink,
    report: SyncReport,
    batch_messages: int,
    should_stop: Callable[[], bool],
    on_batch: BatchHook | None,
) -> None:
    report.position = await sink.position()
    try:
        path = config.storage.outbox_path
        if not await asyncio.to_thread(path.exists):
            raise NoOutbox(f"there is no outbox at {path} yet")
        async with outbox_schema.connect(path, readonly=True) as outbox:
            end_seq = await _last_seq(outbox)
            while not should_stop():
                batch = await _load_batch(sink, outbox, warehouse, end_seq, batch_messages)
                if batch is None:
                    break
                _add(report, batch)
                if on_batch is not None:
                    await on_batch(batch)
    except SYNC_ERRORS as exc:
        _fail(report, exc, log.bind(warehouse=warehouse.name))
    report.finished_at = _now_text()


async def _load_batch(
    sink: Sink,
    outbox: aiosqlite.Connection,
    warehouse: Warehouse,
    end_seq: int,
    batch_messages: int,
) -> BatchResult | None:
    started_s = time.perf_counter()
    async with sink.load() as load:
        position = await load.position()
        if position >= end_seq:
            return None
        messages = list(
            await outbox.execute_fetchall(READ_BATCH, (position, end_seq, batch_messages))
        )
        if not messages:
            return None
        catalog = await load.catalog(map(schema_name, {source for _, source, _ in messages}))
        batch, plan = await asyncio.to_thread(
            _map_and_plan, messages, catalog, warehouse.max_columns, sink.encode_timestamp
        )
        written = await load.apply(plan)
        last_seq = messages[-1][0]
        await load.set_position(last_seq)
    result = BatchResult(
        first_seq=messages[0][0],
        last_seq=last_seq,
        messages=len(messages),
        rows={f"{schema}.{table}": n for (schema, table), n in written.items()},
        discards=len(plan.discards),
    )
    _log_batch(warehouse.name, result, batch, plan, time.perf_counter() - started_s)
    return result


def _map_and_plan(
    messages: list[Any],
    catalog: Catalog,
    max_columns: int,
    encode_timestamp: Callable[[datetime], Any],
) -> tuple[MappedBatch, LoadPlan]:
    """The CPU part of a batch; it runs in a thread so the daemon's event loop keeps serving."""
    mapper = Mapper(loaded_at=_now_text())
    for seq, source, payload in messages:
        try:
            message = _decoder.decode(payload)
        except msgspec.DecodeError:
            log.error("warehouse_unreadable_message", seq=seq)
            continue
        if type(message) is dict:
            mapper.add(source, message)
    batch = mapper.batch()
    plan = plan_load(batch, catalog, max_columns=max_columns, encode_timestamp=encode_timestamp)
    return batch, plan


def _log_batch(
    warehouse: str,
    result: BatchResult,
    batch: MappedBatch,
    plan: LoadPlan,
    duration_s: float,
) -> None:
    bound = log.bind(warehouse=warehouse)
    for (schema, table), columns in plan.refused_columns.items():
        bound.warning("warehouse_column_limit", schema=schema, table=table, columns=columns)
    for name, truncated in batch.long_names.items():
        bound.info("warehouse_name_truncated", name=name, truncated_to=truncated)
    for (schema, table, column), count in batch.dropped.items():
        bound.info(
            "warehouse_reserved_column_dropped",
            schema=schema,
            table=table,
            column=column,
            count=count,
        )
    bound.info(
        "warehouse_batch_loaded",
        first_seq=result.first_seq,
        last_seq=result.last_seq,
        messages=result.messages,
        rows=sum(result.rows.values()),
        discards=result.discards,
        duration_ms=round(duration_s * 1000, 1),
    )


def _add(report: SyncReport, batch: BatchResult) -> None:
    if report.first_seq is None:
        report.first_seq = batch.first_seq
    report.position = batch.last_seq
    report.messages += batch.messages
    report.discards += batch.discards
    for table, rows in batch.rows.items():
        report.rows[table] = report.rows.get(table, 0) + rows


def _fail(report: SyncReport, exc: BaseException, bound: Any) -> None:
    report.status = "partial" if report.messages else "failure"
    report.error = f"{type(exc).__name__}: {exc}"
    report.finished_at = report.finished_at or _now_text()
    bound.error("warehouse_sync_failed", error=report.error, loaded_messages=report.messages)


async def _record(sink: Sink, report: SyncReport, bound: Any) -> None:
    try:
        await sink.record_sync(report)
    except SYNC_ERRORS as exc:
        bound.error("warehouse_sync_not_recorded", error=f"{type(exc).__name__}: {exc}")


async def _last_seq(outbox: aiosqlite.Connection) -> int:
    ((seq,),) = await outbox.execute_fetchall(LAST_SEQ)
    return int(seq)


def _now_text() -> str:
    return utc_text(datetime.now(UTC))


async def outbox_last_seq(path: Path) -> int | None:
    if not await asyncio.to_thread(path.exists):
        return None
    async with outbox_schema.connect(path, readonly=True) as outbox:
        return await _last_seq(outbox)
