"""The file destination: each message (or the `data` an action maps) as one line of JSON in a
local file, rotated by size and age, rotated files gzipped and the oldest pruned.

A batch's lines are written with one write and, with `fsync = "batch"`, fsynced before the batch
counts as delivered; a failed write is cut back off the file, so the batch is retried whole and
no line is written twice by a retry. A message written but not yet recorded as delivered when
cdpd is killed is written again after the restart (at least once): lines carry the messageId
(the whole message does; a mapping should keep it) so readers can drop repeats.

Blocking work (writes, fsyncs, renames, gzip) runs in a thread (see filelog.py), under a lock
that keeps one write at a time; rotation by age and compression run in `run`, so a file that
stops receiving is still rotated on time.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import aiohttp
import msgspec
import structlog

from cdpd.clock import Clock
from cdpd.destinations.actions import (
    EVERY_TYPE,
    WHOLE_MESSAGE,
    Action,
    ActionKind,
    Field,
    Prepared,
    Preset,
    mapped_json,
)
from cdpd.destinations.base import MAX_ERROR_CHARS, Result
from cdpd.destinations.filelog import LogFile
from cdpd.destinations.settings import FileDestination
from cdpd.settings import ConfigError

log = structlog.get_logger()

KINDS = {
    "send": ActionKind(
        "send",
        "Write the `data` field as one line of JSON (by default the whole message, as stored)",
        {"data": Field("the line's JSON value", default=WHOLE_MESSAGE, required=True)},
    )
}
PRESETS = (Preset("Write every message", "send", EVERY_TYPE),)

WRITTEN = 200  # the status an attempt records for lines on disk
IDLE_CHECK_S = 3600.0  # no file to age: `run` is woken when one starts
UPKEEP_RETRY_S = 10.0  # after a failed rotation or compression
_encoder = msgspec.json.Encoder()
P = ParamSpec("P")
T = TypeVar("T")


class File:
    def __init__(self, config: FileDestination, actions: list[Action], clock: Clock) -> None:
        self.name = config.name
        self.actions = actions
        path = Path(config.path)
        if not path.name or path.is_dir():
            raise ConfigError(f"destination {config.name!r}: path {str(path)!r} is a directory")
        if path.exists() and not path.is_file():  # a device or a pipe: never rotated away
            raise ConfigError(
                f"destination {config.name!r}: path {str(path)!r} is not a regular file"
            )
        self._file = LogFile(path, fsync=config.fsync == "batch")
        self._max_bytes = config.max_bytes
        self._interval_ms = round(config.rotate_interval_s * 1000)
        self._keep = config.keep
        self._clock = clock
        self._writing = asyncio.Lock()  # one write, rotation or close at a time
        self._packing = asyncio.Lock()  # one compression pass at a time
        self._wake = asyncio.Event()  # a file started or was rotated: `run` looks again
        self._closed = False
        # Notified after each round of upkeep, for whoever watches the files (tests do).
        self.upkept = asyncio.Condition()

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        groups = [
            (len(group), b"".join(_line(item) for item in group)) for group in _by_delivery(items)
        ]
        async with self._writing:
            if self._closed:
                return [Result(None, "the file destination is closed")] * len(items)
            started_ms = self._file.started_ms
            results, rotated = await _in_thread(self._write, groups, self._clock.now_ms())
            if rotated or (started_ms is None and self._file.started_ms is not None):
                self._wake.set()
        return results

    def _write(self, groups: list[tuple[int, bytes]], now_ms: int) -> tuple[list[Result], bool]:
        """Append the groups (one delivery's lines each, never split across files), rotating
        first where the file is due or the next group would take it past `max_bytes`. Lines
        are written one file's worth at a time; those on disk are delivered, the rest fail."""
        results: list[Result] = []
        rotated = False
        chunk: list[bytes] = []
        count = chunk_bytes = 0
        try:
            self._file.look()
            for items, data in groups:
                size = self._file.size + chunk_bytes
                if size and (self._too_big(size + len(data)) or self._due(now_ms)):
                    self._flush(chunk, now_ms)
                    results += [Result(WRITTEN)] * count
                    chunk, count, chunk_bytes = [], 0, 0
                    self._file.rotate(now_ms)
                    rotated = True
                chunk.append(data)
                count += items
                chunk_bytes += len(data)
            self._flush(chunk, now_ms)
            results += [Result(WRITTEN)] * count
        except OSError as exc:
            failed = Result(None, self._error(exc))
            total = sum(items for items, _ in groups)
            results += [failed] * (total - len(results))
        return results, rotated

    def _flush(self, chunk: list[bytes], now_ms: int) -> None:
        if chunk:
            self._file.append(b"".join(chunk), now_ms)

    def _too_big(self, size: int) -> bool:
        return self._max_bytes > 0 and size > self._max_bytes

    def _due(self, now_ms: int) -> bool:
        started_ms = self._file.started_ms
        return (
            bool(self._interval_ms)
            and started_ms is not None
            and (now_ms >= started_ms + self._interval_ms)
        )

    def _error(self, exc: OSError) -> str:
        text = exc.strerror if isinstance(exc.strerror, str) else None
        if not text or not text.startswith("cannot "):
            text = f"cannot write {self._file.path}: {exc.strerror or exc}"
        return text[:MAX_ERROR_CHARS]

    # -- between sends -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: rotate the file when it is due (receiving or not), compress rotated
        files and prune the oldest; also those a crash left uncompressed."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._wake_when(stop), name=f"wake-{self.name}")
            while not stop.is_set():
                self._wake.clear()
                delay_s = await self._tend()
                async with self.upkept:
                    self.upkept.notify_all()
                await self._clock.wait(self._wake, delay_s)

    async def _wake_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _tend(self) -> float:
        """One round of upkeep; the seconds until the file is next due."""
        try:
            async with self._writing:
                if self._closed:
                    return IDLE_CHECK_S
                now_ms = self._clock.now_ms()
                await _in_thread(self._rotate_if_due, now_ms)
            await self._compress()
        except OSError as exc:
            log.warning("file_upkeep_failed", destination=self.name, error=self._error(exc))
            return UPKEEP_RETRY_S
        except Exception:  # a fault of its own never ends the upkeep
            log.exception("file_upkeep_failed", destination=self.name)
            return UPKEEP_RETRY_S
        started_ms = self._file.started_ms
        if not self._interval_ms or started_ms is None:
            return IDLE_CHECK_S
        return max(0.0, (started_ms + self._interval_ms - self._clock.now_ms()) / 1000)

    def _rotate_if_due(self, now_ms: int) -> None:
        self._file.look()
        if self._file.size and self._due(now_ms):
            self._file.rotate(now_ms)

    async def _compress(self) -> None:
        async with self._packing:
            for plain in await _in_thread(self._file.uncompressed):
                packed = await _in_thread(self._file.compress, plain)
                log.info("file_rotated", destination=self.name, file=str(packed))
            if self._keep is not None:
                for path in await _in_thread(self._file.prune, self._keep):
                    log.info("file_pruned", destination=self.name, file=str(path))

    async def erase(self, drop: Callable[[bytes], bool]) -> int:
        """Rewrite the current and the rotated files without the lines `drop` picks (a
        regulation's deletion), between two writes; returns how many lines went."""
        async with self._writing, self._packing:
            return await _in_thread(self._file.erase, drop)

    async def close(self) -> None:
        """Close the file; compress what was rotated since `run` stopped. Idempotent."""
        async with self._writing:
            if self._closed:
                return
            self._closed = True
            await _in_thread(self._file.close)
        try:
            await self._compress()
        except OSError as exc:  # the next start compresses them
            log.warning("file_upkeep_failed", destination=self.name, error=self._error(exc))


async def _in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn` in a worker thread. A thread cannot be stopped: cancelled meanwhile, this still
    waits for it to end, so the lock held around it is never let go while the file is in use."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    work = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


def _by_delivery(items: Sequence[Prepared]) -> list[list[Prepared]]:
    """Consecutive items of one delivery (a message that several actions take)."""
    return [list(group) for _, group in itertools.groupby(items, lambda i: i.delivery.id)]


def _line(item: Prepared) -> bytes:
    """The stored message itself when the action writes it whole, else the mapped data."""
    data = mapped_json(item, "data")
    if "data" in item.whole_fields and (b"\n" in data or b"\r" in data):
        data = msgspec.json.format(data, indent=0)  # stored compact; kept to one line anyway
    return data + b"\n"
