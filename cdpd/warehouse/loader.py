"""One sync: read the outbox in order, in batches, and load each batch in one transaction.

Each batch runs inside the sink's load transaction, which holds the warehouse's load lock:
read the position stored in the warehouse, read the next outbox messages after it (read-only,
ordered by seq), map and plan them, write tables, columns, rows and discards, advance the
position, commit. A crash anywhere before the commit leaves the warehouse as it was, and the
next sync loads the same messages again; two syncs take turns, and the second finds the
position already advanced. A sync loads up to the outbox's last message when it started.

While the warehouse writes one batch, the next one is read, mapped and planned in a thread, so
the two overlap. That work is a guess made outside the next batch's transaction: it is used
only if that transaction finds the position the guess started from, and its plan only if the
warehouse's columns are the ones the plan assumed; otherwise the batch is read or planned again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import asyncpg
import msgspec
import structlog

from cdpd.config import Config, Warehouse
from cdpd.outbox import schema as outbox_schema
from cdpd.warehouse.mapping import MappedBatch, Mapper, TableKey
from cdpd.warehouse.naming import schema_name
from cdpd.warehouse.plan import Catalog, LoadPlan, plan_load
from cdpd.warehouse.report import SyncReport
from cdpd.warehouse.sinks import Load, Sink, open_sink
from cdpd.warehouse.values import utc_text

log = structlog.get_logger("cdpd.warehouse")

BATCH_MESSAGES = 10_000
READ_BATCH = """
SELECT seq, source, payload FROM messages WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?
"""
LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM messages"

_decoder = msgspec.json.Decoder()
_T = TypeVar("_T")


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
            reader = _Reader(outbox, warehouse, sink, await _last_seq(outbox), batch_messages)
            ahead: Prepared | None = None
            while not should_stop():
                loaded = await _load_batch(sink, reader, ahead)
                if loaded is None:
                    break
                batch, ahead = loaded
                _add(report, batch)
                if on_batch is not None:
                    await on_batch(batch)
    except SYNC_ERRORS as exc:
        _fail(report, exc, log.bind(warehouse=warehouse.name))
    report.finished_at = _now_text()


class Prepared(msgspec.Struct):
    """The outbox messages after `after_seq`, mapped, and planned against `catalog` if given."""

    after_seq: int
    first_seq: int
    last_seq: int
    messages: int
    schemas: set[str]
    batch: MappedBatch
    catalog: Catalog | None  # what `plan` assumed the warehouse holds for `schemas`
    plan: LoadPlan | None


class _Reader:
    """Reads and maps the outbox messages of a sync, a batch at a time."""

    def __init__(
        self,
        outbox: aiosqlite.Connection,
        warehouse: Warehouse,
        sink: Sink,
        end_seq: int,
        batch_messages: int,
    ) -> None:
        self.outbox = outbox
        self.warehouse = warehouse
        self.encode_timestamp = sink.encode_timestamp
        self.end_seq = end_seq
        self.batch_messages = batch_messages

    async def prepare(self, after_seq: int, catalog: Catalog | None) -> Prepared | None:
        """The next batch after `after_seq`, or None when the sync has nothing more to load.
        With `catalog`, it is planned too (the plan is used only if the warehouse matches)."""
        if after_seq >= self.end_seq:
            return None
        messages = list(
            await self.outbox.execute_fetchall(
                READ_BATCH, (after_seq, self.end_seq, self.batch_messages)
            )
        )
        if not messages:
            return None
        return await asyncio.to_thread(self._map, after_seq, messages, catalog)

    def plan(self, batch: MappedBatch, catalog: Catalog) -> LoadPlan:
        return plan_load(
            batch,
            catalog,
            max_columns=self.warehouse.max_columns,
            encode_timestamp=self.encode_timestamp,
        )

    def _map(self, after_seq: int, messages: list[Any], catalog: Catalog | None) -> Prepared:
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
        schemas = {schema_name(source) for source in {source for _, source, _ in messages}}
        if catalog is not None:
            catalog = {key: columns for key, columns in catalog.items() if key[0] in schemas}
        return Prepared(
            after_seq=after_seq,
            first_seq=messages[0][0],
            last_seq=messages[-1][0],
            messages=len(messages),
            schemas=schemas,
            batch=batch,
            catalog=catalog,
            plan=None if catalog is None else self.plan(batch, catalog),
        )


async def _load_batch(
    sink: Sink, reader: _Reader, ahead: Prepared | None
) -> tuple[BatchResult, Prepared | None] | None:
    """Load one batch, and read, map and plan the next one while the warehouse writes this one.

    The next batch is only a guess made outside its transaction: it is used only if that
    transaction finds the position where the guess started (another sync may have loaded it
    meanwhile) and its plan only if the warehouse's columns are the ones it assumed.
    """
    started_s = time.perf_counter()
    async with sink.load() as load:
        position = await load.position()
        if position >= reader.end_seq:
            return None
        prepared = ahead if ahead is not None and ahead.after_seq == position else None
        if prepared is None:
            prepared = await reader.prepare(position, None)
            if prepared is None:
                return None
        catalog = await load.catalog(prepared.schemas)
        plan = prepared.plan
        if plan is None or prepared.catalog != catalog:
            plan = await asyncio.to_thread(reader.plan, prepared.batch, catalog)
        following = await _alongside(
            _write(load, plan, prepared.last_seq),
            reader.prepare(prepared.last_seq, _grown(catalog, plan)),
        )
    result = BatchResult(
        first_seq=prepared.first_seq,
        last_seq=prepared.last_seq,
        messages=prepared.messages,
        rows={f"{schema}.{table}": n for (schema, table), n in following[0].items()},
        discards=len(plan.discards),
    )
    _log_batch(reader.warehouse.name, result, prepared.batch, plan, time.perf_counter() - started_s)
    return result, following[1]


async def _write(load: Load, plan: LoadPlan, last_seq: int) -> dict[TableKey, int]:
    written = await load.apply(plan)
    await load.set_position(last_seq)
    return written


async def _alongside(
    main: Coroutine[Any, Any, _T], ahead: Coroutine[Any, Any, Prepared | None]
) -> tuple[_T, Prepared | None]:
    """Run `ahead` while `main` runs. The task never outlives this call: when `main` fails,
    it is cancelled and waited for. A failed `ahead` is only a missed guess (None): the next
    batch reads again, and meets the error itself if it persists."""
    task = asyncio.ensure_future(ahead)
    try:
        result = await main
    except BaseException:
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # seen: the batch's own error is the one that counts
        raise
    try:
        return result, await task
    except SYNC_ERRORS:
        return result, None


def _grown(catalog: Catalog, plan: LoadPlan) -> Catalog:
    """The warehouse's columns once `plan` is applied."""
    grown = {key: dict(columns) for key, columns in catalog.items()}
    for table in plan.tables:
        grown.setdefault((table.schema, table.table), {}).update(table.new_columns)
    return grown


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
