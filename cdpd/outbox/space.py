"""Watching the disk under the outbox so that cdpd answers 503 before the disk is full.

The check runs on a timer, never on the request path; when space returns, writes resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import structlog

from cdpd.outbox.writer import OutboxUnavailable, OutboxWriter

log = structlog.get_logger("cdpd.outbox")

CHECK_INTERVAL_S = 1.0


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


async def watch_free_space(
    writer: OutboxWriter,
    data_dir: Path,
    *,
    min_free_bytes: int,
    retry_after_s: int,
    interval_s: float = CHECK_INTERVAL_S,
) -> None:
    """Refuse writes while the free space under `data_dir` is below `min_free_bytes`."""
    refusing = False
    while True:
        free = await asyncio.to_thread(free_bytes, data_dir)
        low = free < min_free_bytes
        if low != refusing:
            refusing = low
            if low:
                log.error("disk_space_low", free_bytes=free, min_free_bytes=min_free_bytes)
                writer.refuse(
                    OutboxUnavailable(
                        "disk_full",
                        f"the disk holding the outbox has {free} bytes free, below the "
                        f"configured floor of {min_free_bytes}; nothing was stored",
                        retry_after_s,
                    )
                )
            else:
                log.info("disk_space_recovered", free_bytes=free)
                writer.refuse(None)
        await asyncio.sleep(interval_s)
