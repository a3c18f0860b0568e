"""Outbox batches for a sync: read in seq order, decoded, mapped and planned, one read ahead.

`prepare` is the CPU part of a sync: it reads one batch from the outbox file (read-only), decodes,
maps and plans it for a given catalog. It runs in a thread, or, when a sync has more than one
batch to load on a machine with a second core, in a worker process of that sync, which can map
one batch while the daemon writes the one before. The worker sends back only the plan.

While one batch is written to the warehouse, the next is prepared for the catalog the current
batch leaves behind. The loader uses it only if, inside its load transaction, the position is
where the read started and the catalog is the one the plan assumed; otherwise the batch is
prepared again. So reading ahead changes the speed of a sync, never what it writes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog

from cdpd.privacy.controls import PathControls
from cdpd.warehouse.mapping import Mapper, UnreadableMessage
from cdpd.warehouse.naming import schema_name
from cdpd.warehouse.plan import Catalog, LoadPlan, plan_load
from cdpd.warehouse.values import utc_text

log = structlog.get_logger("cdpd.warehouse")

READ_BATCH = """
SELECT seq, source, payload FROM messages WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?
"""
READ_UNREADABLE = """
SELECT message_id, type, event, received_at, payload FROM messages WHERE seq = ?
"""
READ_SOURCES = """
SELECT DISTINCT source FROM (
    SELECT source FROM messages WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?)
"""
BUSY_TIMEOUT_S = 5.0

_decoder = msgspec.json.Decoder()


class Reading(msgspec.Struct, frozen=True):
    """What the batches of one sync share: up to `size` outbox messages each, up to `end_seq`."""

    outbox: Path
    end_seq: int
    size: int
    max_columns: int
    encode_timestamp: Callable[[datetime], Any]  # a module-level function: it goes to a worker
    # The warehouse's privacy controls over the inventory as the sync found it.
    controls: PathControls | None = None
    # With [identity]: the identity store, whose profile ids become each row's `segment_id`.
    identity: Path | None = None


class Job(msgspec.Struct, frozen=True):
    """One batch to prepare: the messages after `after_seq`, planned for `catalog`."""

    reading: Reading
    after_seq: int
    catalog: Catalog


class Batch(msgspec.Struct):
    """Outbox messages `first_seq`..`last_seq`, planned for `planned_for` (their schemas' part
    of the catalog the job gave)."""

    after_seq: int
    first_seq: int
    last_seq: int
    messages: int
    schemas: frozenset[str]
    planned_for: Catalog
    plan: LoadPlan
    unreadable: list[int]  # seqs whose payload cannot be decoded (each one is a discard)
    dropped: Counter[tuple[str, str, str]]  # see MappedBatch
    long_names: dict[str, str]


def prepare(job: Job) -> Batch | None:
    """Read, decode, map and plan one batch; None when the outbox has nothing after the job's
    position. Pure but for reading the outbox, so that it can run in a worker process."""
    reading = job.reading
    with _outbox(reading.outbox) as outbox:
        rows = outbox.execute(READ_BATCH, (job.after_seq, reading.end_seq, reading.size)).fetchall()
    if not rows:
        return None
    mapper = Mapper(loaded_at=utc_text(datetime.now(UTC)))
    segment_ids = _segment_ids(reading.identity, rows[0][0], rows[-1][0])
    unreadable: dict[int, tuple[str, str]] = {}
    controls = reading.controls
    for seq, source, payload in rows:
        try:
            message = _decoder.decode(payload)
        except msgspec.DecodeError as exc:
            unreadable[seq] = (source, str(exc))
            continue
        if type(message) is dict:
            if controls is not None:
                controls.apply(message)
            mapper.add(source, message, segment_ids.get(seq))
    if unreadable:
        _discard_unreadable(reading.outbox, unreadable, mapper)
    mapped = mapper.batch()
    # In stored JSON a U+0000 can only be the escape `\u0000` (this finds `\\u0000` too,
    # which is harmless: it only makes `plan` look for the character).
    mapped.nul_text = any("\\u0000" in payload for _, _, payload in rows)
    schemas = frozenset(map(schema_name, {source for _, source, _ in rows}))
    catalog = {key: columns for key, columns in job.catalog.items() if key[0] in schemas}
    plan = plan_load(
        mapped,
        catalog,
        max_columns=reading.max_columns,
        encode_timestamp=reading.encode_timestamp,
    )
    return Batch(
        after_seq=job.after_seq,
        first_seq=rows[0][0],
        last_seq=rows[-1][0],
        messages=len(rows),
        schemas=schemas,
        planned_for=catalog,
        plan=plan,
        unreadable=sorted(unreadable),
        dropped=mapped.dropped,
        long_names=mapped.long_names,
    )


def _discard_unreadable(
    outbox_path: Path, unreadable: dict[int, tuple[str, str]], mapper: Mapper
) -> None:
    """Each message of `unreadable` (seq -> source, error) as a discard of its own."""
    with _outbox(outbox_path) as outbox:
        for seq, (source, error) in unreadable.items():
            found = outbox.execute(READ_UNREADABLE, (seq,)).fetchone()
            if found is not None:
                mapper.add_unreadable(source, UnreadableMessage(*found), error)


def next_schemas(reading: Reading, after_seq: int) -> frozenset[str]:
    """The schemas of the batch after `after_seq`: the catalog a plan needs is theirs."""
    with _outbox(reading.outbox) as outbox:
        sources = outbox.execute(
            READ_SOURCES, (after_seq, reading.end_seq, reading.size)
        ).fetchall()
    return frozenset(schema_name(source) for (source,) in sources)


def _segment_ids(identity: Path | None, first_seq: int, last_seq: int) -> dict[int, str]:
    """The profile each message was resolved to, at the time (Segment's `segment_id`)."""
    if identity is None:
        return {}
    with _outbox(identity) as store:
        rows = store.execute(
            "SELECT seq, profile_id FROM resolutions WHERE seq BETWEEN ? AND ?"
            " AND profile_id IS NOT NULL",
            (first_seq, last_seq),
        ).fetchall()
    return dict(rows)


def _outbox(path: Path) -> closing[sqlite3.Connection]:
    """A read-only connection to the outbox, closed at the end of a `with` block."""
    return closing(
        sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False
        )
    )


def worker_pool(backlog: int, size: int, wanted: bool | None) -> ProcessPoolExecutor | None:
    """A worker process for a sync, if `wanted`; if None, when the sync has more than one batch
    to load on a machine with a second core. It starts now, and is ready by the time the first
    batch has been prepared in a thread."""
    if wanted is None:
        wanted = backlog > size and _cores() > 1
    if not wanted:
        return None
    try:
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_leave_signals_to_the_daemon,
        )
    except OSError as exc:  # no POSIX semaphores here, for instance
        log.warning("warehouse_worker_unavailable", error=str(exc), fallback="thread")
        return None
    try:
        pool.submit(_ready)
    except OSError as exc:  # no process could be started
        pool.shutdown(wait=False, cancel_futures=True)
        log.warning("warehouse_worker_unavailable", error=str(exc), fallback="thread")
        return None
    return pool


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _leave_signals_to_the_daemon() -> None:
    """A worker ignores Ctrl-C and SIGTERM (systemd sends it to the whole service): the daemon
    handles them and ends the sync, and with it the worker. A KeyboardInterrupt raised in the
    worker would come back as the result of its batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _ready() -> None:
    """Nothing: unpickling it makes a new worker import this module and what it needs."""


CatalogOf = Callable[[frozenset[str]], Awaitable[Catalog]]


class BatchReader:
    """Prepares the batches of one sync: read-aheads in `executor` (None: a thread), and a
    batch the loader waits for with nothing else to do in a thread."""

    def __init__(self, reading: Reading, executor: Executor | None) -> None:
        self._reading = reading
        self._executor = executor
        self._ahead: asyncio.Future[Batch | None] | None = None
        self._ahead_after = -1

    async def take(self, position: int, catalog_of: CatalogOf) -> tuple[Batch, Catalog] | None:
        """The batch after `position`, planned for the catalog `catalog_of` gives for its
        schemas, and that catalog; None when there is nothing after `position`."""
        if position >= self._reading.end_seq:
            await self.close()
            return None
        ahead, self._ahead = self._ahead, None
        if ahead is not None and self._ahead_after == position:
            try:
                batch = await ahead
            except BrokenProcessPool as exc:
                log.warning("warehouse_worker_lost", error=str(exc), fallback="thread")
                self._executor = None
                return await self.take(position, catalog_of)
            if batch is None:
                return None
        else:
            if ahead is not None:
                await _cancelled(ahead)
            schemas = await asyncio.to_thread(next_schemas, self._reading, position)
            batch = await self._prepare(position, await catalog_of(schemas), None)
            if batch is None:
                return None
        catalog = await catalog_of(batch.schemas)
        if catalog != batch.planned_for:
            batch = await self._prepare(position, catalog, None)
            if batch is None:
                return None
        return batch, catalog

    def read_ahead(self, position: int, catalog: Catalog) -> None:
        """Start preparing the batch after `position`, for `catalog`."""
        if self._ahead is not None:
            self._ahead.cancel()
        self._ahead_after = position
        self._ahead = asyncio.ensure_future(self._prepare(position, catalog, self._executor))

    async def close(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await _cancelled(ahead)

    async def _prepare(
        self, position: int, catalog: Catalog, executor: Executor | None
    ) -> Batch | None:
        job = Job(reading=self._reading, after_seq=position, catalog=catalog)
        loop = asyncio.get_running_loop()
        batch: Batch | None = await loop.run_in_executor(executor, prepare, job)
        return batch


async def _cancelled(future: asyncio.Future[Any]) -> None:
    """Cancel a read-ahead nobody wants and wait for it; its outcome does not matter."""
    future.cancel()
    await asyncio.wait([future])
    if not future.cancelled():
        future.exception()
