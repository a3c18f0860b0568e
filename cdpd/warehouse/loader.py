"""One sync: read the outbox in order, in batches, and load each batch in one transaction.

Each batch runs inside the sink's load transaction, which holds the warehouse's load lock:
read the position stored in the warehouse, take the outbox messages after it (read-only,
ordered by seq; `batches` reads the next one ahead while this one is written), plan them for
the warehouse's catalog, write tables, columns, rows and discards, advance the position,
commit. A crash anywhere before the commit leaves the warehouse as it was, and the next sync
loads the same messages again; two syncs take turns, and the second finds the position already
advanced. A sync loads up to the outbox's last message when it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import msgspec
import structlog

from cdpd.config import Config, Warehouse, identity_path
from cdpd.outbox import continuity
from cdpd.outbox import schema as outbox_schema
from cdpd.privacy import store as privacy_store
from cdpd.privacy.portal import warehouse_controls
from cdpd.warehouse.batches import Batch, BatchReader, Reading, worker_pool
from cdpd.warehouse.plan import catalog_after
from cdpd.warehouse.report import SyncReport
from cdpd.warehouse.sinks import Sink, open_sink
from cdpd.warehouse.sinks.errors import UnusableWarehouse
from cdpd.warehouse.values import utc_text

log = structlog.get_logger("cdpd.warehouse")

BATCH_MESSAGES = 10_000
LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM messages"


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
SYNC_ERRORS = (
    OSError,
    aiosqlite.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    NoOutbox,
    UnusableWarehouse,
    continuity.OutboxBehind,
)


async def sync(
    config: Config,
    warehouse: Warehouse,
    *,
    batch_messages: int = BATCH_MESSAGES,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: BatchHook | None = None,
    worker: bool | None = None,
) -> SyncReport:
    """Load everything the outbox holds now; errors end up in the report, not raised.
    `worker` says whether batches are prepared in a worker process; None: when it pays."""
    report = SyncReport(warehouse=warehouse.name, started_at=_now_text())
    bound = log.bind(warehouse=warehouse.name)
    try:
        async with open_sink(config, warehouse) as sink:
            await _load_all(
                config, warehouse, sink, report, batch_messages, should_stop, on_batch, worker
            )
            if config.identity is not None and report.status != "failure":
                await _load_profiles(config, warehouse, sink, report)
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
    worker: bool | None,
) -> None:
    position = await sink.position()
    try:
        path = config.storage.outbox_path
        if not await asyncio.to_thread(path.exists):
            raise NoOutbox(f"there is no outbox at {path} yet")
        async with outbox_schema.connect(path, readonly=True) as outbox:
            gap = await continuity.gap(outbox, warehouse.name, position)
            if gap is not None:
                raise continuity.OutboxBehind(gap)
            report.position = position
            end_seq = await _last_seq(outbox)
            classes = await privacy_store.read_classes(outbox)
        identity = identity_path(config) if config.identity is not None else None
        if identity is not None:  # events wait for their segment_id: load what is resolved
            end_seq = min(end_seq, await asyncio.to_thread(_resolved_through, identity))
        pool = worker_pool(end_seq - report.position, batch_messages, worker)
        reading = Reading(
            outbox=path,
            end_seq=end_seq,
            size=batch_messages,
            max_columns=warehouse.max_columns,
            encode_timestamp=sink.encode_timestamp,
            controls=warehouse_controls(config.privacy, warehouse.name, classes),
            identity=identity,
        )
        reader = BatchReader(reading, pool)
        try:
            while not should_stop():
                batch = await _load_batch(sink, reader, warehouse.name)
                if batch is None:
                    break
                _add(report, batch)
                if on_batch is not None:
                    await on_batch(batch)
        finally:
            try:
                await reader.close()
            finally:
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
    except SYNC_ERRORS as exc:
        _fail(report, exc, log.bind(warehouse=warehouse.name))
    report.finished_at = _now_text()


async def _load_batch(sink: Sink, reader: BatchReader, warehouse: str) -> BatchResult | None:
    started_s = time.perf_counter()
    async with sink.load() as load:
        taken = await reader.take(await load.position(), load.catalog)
        if taken is None:
            return None
        batch, catalog = taken
        reader.read_ahead(batch.last_seq, catalog_after(catalog, batch.plan))
        written = await load.apply(batch.plan)
        await load.set_position(batch.last_seq)
    result = BatchResult(
        first_seq=batch.first_seq,
        last_seq=batch.last_seq,
        messages=batch.messages,
        rows={f"{schema}.{table}": n for (schema, table), n in written.items()},
        discards=len(batch.plan.discards),
    )
    _log_batch(warehouse, result, batch, time.perf_counter() - started_s)
    return result


def _resolved_through(identity: Path) -> int:
    """How far identity resolution has come (0 before its store exists)."""
    if not identity.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{identity}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT seq FROM position WHERE name = 'outbox'").fetchone()
    return int(row[0]) if row else 0


def identity_last_change(config: Config) -> int | None:
    """The identity store's last change number (None without identity or its store)."""
    path = identity_path(config)
    if config.identity is None or not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT seq FROM position WHERE name = 'changes'").fetchone()
    return int(row[0]) if row else None


async def _load_profiles(
    config: Config, warehouse: Warehouse, sink: Sink, report: SyncReport
) -> None:
    """Profiles Sync, after the events (see cdpd.identity.profiles_sync)."""
    from cdpd.identity import profiles_sync  # the identity stage's tables, read-only

    try:
        report.rows.update(await profiles_sync.load(config, sink, warehouse.max_columns))
    except (*SYNC_ERRORS, sqlite3.Error) as exc:
        _fail(report, exc, log.bind(warehouse=warehouse.name))


def _log_batch(warehouse: str, result: BatchResult, batch: Batch, duration_s: float) -> None:
    bound = log.bind(warehouse=warehouse)
    for seq in batch.unreadable:
        bound.error("warehouse_unreadable_message", seq=seq)
    for (schema, table), columns in batch.plan.refused_columns.items():
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
    if isinstance(exc, continuity.OutboxBehind):
        gap = exc.gap
        bound.error(
            gap.code,
            warehouse_position=gap.warehouse_position,
            outbox_seq=gap.outbox_seq,
            rewind_to=gap.rewind_to,
            message=gap.message,
        )
        return
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


async def sequence_gap(config: Config, warehouse: Warehouse) -> continuity.SequenceGap | None:
    """Whether `warehouse` is ahead of the outbox (None also when there is no outbox yet)."""
    async with open_sink(config, warehouse) as sink:
        position = await sink.position()
    path = config.storage.outbox_path
    if not await asyncio.to_thread(path.exists):
        return None
    async with outbox_schema.connect(path, readonly=True) as outbox:
        return await continuity.gap(outbox, warehouse.name, position)


async def outbox_last_seq(path: Path) -> int | None:
    if not await asyncio.to_thread(path.exists):
        return None
    async with outbox_schema.connect(path, readonly=True) as outbox:
        return await _last_seq(outbox)
