"""Watching the disk under the outbox so that cdpd answers 503 before the disk is full.

The disk is measured on a timer; between two measurements, each commit of requests' rows counts
what it writes against the space measured; when space returns, writes resume. The
watch is a supervised service (`run(stop)`): a failing measurement is logged and the watch
restarts, while the refusal it last decided stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

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
        clock: Clock | None = None,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._writer = writer
        self._data_dir = data_dir
        self._min_free_bytes = min_free_bytes
        self._retry_after_s = retry_after_s
        self._measure = measure
        self._clock = clock or SystemClock()
        self._interval_s = interval_s
        self.refusing = False
        self._refusal: OutboxUnavailable | None = None
        self._measured_free = 0
        self._written_since = 0
        writer.guard_space(self.admit)

    async def check(self) -> None:
        free = await asyncio.to_thread(self._measure, self._data_dir)
        self._measured_free, self._written_since = free, 0
        self._decide(free)

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
