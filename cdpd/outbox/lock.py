"""One daemon per data folder: an exclusive lock on `<data_dir>/cdpd.lock`, taken before the
outbox is opened (start-up recovery on a live outbox would release the running daemon's
in-flight deliveries and send them twice).

The lock is `flock(2)`: the kernel drops it when the process ends, however it ends, so a crash
never leaves a stale lock behind. The file holds the owner's pid, for the message only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from cdpd.startup import StartupError

LOCK_FILE = "cdpd.lock"


class DataDirBusy(StartupError):
    """Another process holds the data folder; the message is the one line to show."""


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data folder's lock for the block; raise DataDirBusy when another holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            who = f"pid {owner}" if owner else "another process"
            raise DataDirBusy(f"another cdpd ({who}) is using {data_dir}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
