"""Watching the disk under the outbox so that cdpd answers 503 before the disk is full.

The disk is measured on a timer; between two measurements, each commit of requests' rows counts
what it writes against the space measured; when space returns, writes resume.

Before each measurement the watch checkpoints the WAL itself (PASSIVE: it never waits for
readers or the writer). A commit lands in the WAL first and only reaches the database file at a
checkpoint, which grows that file; SQLite's own checkpoint runs only every 1,000 pages (4 MB),
so without this the outbox could owe the disk several megabytes at the moment it is found
full, and the space a person frees afterwards would be taken by that checkpoint instead of
ingest. Checkpointed every second, what is owed is at most a second's commits, and whatever a
checkpoint could not copy (a reader still on older pages, or no room) is counted as used.

The watch is a supervised service (`run(stop)`): a failing measurement is logged and the watch
restarts, while the refusal it last decided stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiosqlite
import structlog

from cdpd.clock import Clock, SystemClock
from cdpd.outbox.writer import OutboxUnavailable, OutboxWriter

log = structlog.get_logger()

CHECK_INTERVAL_S = 1.0
WRITE_FACTOR = 3  # a row's bytes go to the WAL, then the database file, with index entries


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def outbox_bytes(path: Path) -> int:
    """The database file and its write-ahead log."""
    total = 0
    for name in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += name.stat().st_size
    return total


Checkpoint = Callable[[bool], Awaitable[int]]
CHECKPOINT_BUSY_TIMEOUT_MS = 100  # never hold up the writer for long waiting on a reader
MAX_WAL_PAGES = 1000  # SQLite's default wal_autocheckpoint
MIN_WAL_PAGES = 16


async def nothing_owed(_truncate: bool) -> int:
    return 0


async def bound_the_wal(conn: aiosqlite.Connection, min_free_bytes: int) -> None:
    """Have the writer's connection checkpoint whenever the WAL holds a quarter of the floor
    (SQLite's default, 1,000 pages, is 4 MB): what the WAL owes the database file is then
    always well within the floor, so the space freed after a full disk covers it."""
    if not min_free_bytes:
        return
    page_size = await _pragma_int(conn, "PRAGMA page_size")
    pages = min(MAX_WAL_PAGES, max(MIN_WAL_PAGES, min_free_bytes // 4 // page_size))
    await conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")


@contextlib.asynccontextmanager
async def checkpointer(outbox: Path) -> AsyncIterator[Checkpoint]:
    """A connection of its own that checkpoints the outbox's WAL when called, returning the
    bytes the database file may still grow by (pages left in the WAL, not yet copied). With
    `truncate`, a checkpoint that copied everything also empties the WAL file, giving its
    space back to the disk. A checkpoint that fails (no room to grow the file) counts the
    whole WAL as owed."""
    conn = await aiosqlite.connect(outbox, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
        page_size = await _pragma_int(conn, "PRAGMA page_size")

        failing = False

        async def checkpoint(truncate: bool) -> int:
            nonlocal failing
            try:
                # PASSIVE first: TRUNCATE would wait for readers before copying anything.
                owed = await _checkpoint(conn, "PASSIVE") * page_size
                if truncate and not owed:
                    await _checkpoint(conn, "TRUNCATE")
            except sqlite3.Error as exc:
                if not failing:  # once per run of failures, not every second of a full disk
                    log.warning("checkpoint_failed", error=str(exc))
                failing = True
                return _wal_bytes(outbox)
            failing = False
            return owed

        yield checkpoint
    finally:
        await conn.close()


async def _checkpoint(conn: aiosqlite.Connection, mode: str) -> int:
    """Run a checkpoint; the number of WAL frames it could not copy."""
    async with conn.execute(f"PRAGMA wal_checkpoint({mode})") as cursor:
        row = await cursor.fetchone()
    _busy, in_wal, copied = row if row is not None else (0, 0, 0)
    return max(0, in_wal - copied)


def _wal_bytes(outbox: Path) -> int:
    try:
        return outbox.with_name(outbox.name + "-wal").stat().st_size
    except FileNotFoundError:
        return 0


async def _pragma_int(conn: aiosqlite.Connection, sql: str) -> int:
    async with conn.execute(sql) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


class SpaceWatch:
    """Refuses writes while the free space under `data_dir` is below `min_free_bytes`."""

    def __init__(
        self,
        writer: OutboxWriter,
        data_dir: Path,
        *,
        min_free_bytes: int,
        retry_after_s: int,
        measure: Callable[[Path], int] = free_bytes,
        checkpoint: Checkpoint = nothing_owed,
        clock: Clock | None = None,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._writer = writer
        self._data_dir = data_dir
        self._min_free_bytes = min_free_bytes
        self._retry_after_s = retry_after_s
        self._measure = measure
        self._checkpoint = checkpoint
        self._clock = clock or SystemClock()
        self._interval_s = interval_s
        self.refusing = False
        self._refusal: OutboxUnavailable | None = None
        self._measured_free = 0
        self._written_since = 0
        writer.guard_space(self.admit)

    async def check(self) -> None:
        owed = await self._owed_to_the_database_file()
        free = await asyncio.to_thread(self._measure, self._data_dir) - owed
        self._measured_free, self._written_since = free, 0
        self._decide(free)

    async def _owed_to_the_database_file(self) -> int:
        """Checkpoint, and return what the WAL still holds for the database file."""
        if not self._min_free_bytes:
            return 0
        # While refusing, also empty the WAL: its file may hold megabytes the disk needs.
        return await self._checkpoint(self.refusing)

    def admit(self, size_bytes: int) -> OutboxUnavailable | None:
        """Asked by the writer before each commit of requests' rows: the free space of the last
        measurement less what has been committed since, so a burst between two measurements
        cannot run the disk past the floor. What a commit writes counts `WRITE_FACTOR` times
        (the WAL, then the database file)."""
        if not self._min_free_bytes:
            return None
        self._written_since += size_bytes * WRITE_FACTOR
        return self._decide(self._measured_free - self._written_since)

    def _decide(self, free: int) -> OutboxUnavailable | None:
        low = free < self._min_free_bytes
        if low != self.refusing:
            self.refusing = low
            if low:
                log.error("disk_space_low", free_bytes=free, min_free_bytes=self._min_free_bytes)
                self._refusal = OutboxUnavailable(
                    "disk_full",
                    f"the disk holding the outbox has {max(free, 0)} bytes free, below the "
                    f"configured floor of {self._min_free_bytes} (storage.min_free_disk_bytes); "
                    "nothing was stored",
                    self._retry_after_s,
                )
            else:
                log.info("disk_space_recovered", free_bytes=free)
                self._refusal = None
            self._writer.refuse(self._refusal)
        return self._refusal

    async def run(self, stop: asyncio.Event) -> None:
        """Check now and every `interval_s` until `stop` is set."""
        while True:
            await self.check()
            if await self._clock.wait(stop, self._interval_s):
                return
