"""The blocking side of the file destination: one log file appended to, rotated away by a
rename, compressed atomically and pruned. Everything here runs in a worker thread, one call at a
time (the destination holds a lock around each), never on the event loop.

Rotated files are named `<stem>-<UTC time>-<sequence><suffix>` (`events-20261205T231500Z-0001
.ndjson`) and, once compressed, the same with `.gz`. The sequence grows by one per rotation, from
the highest found on disk, so names sort in the order the files were written (the time first,
the sequence within a second).
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import IO

import structlog

log = structlog.get_logger()

GZIP_TEMP_SUFFIX = ".tmp"
ERASE_TEMP_SUFFIX = ".erasing"
_COPY_CHUNK_BYTES = 1024 * 1024


class LogFile:
    """The current file at `path`: an append-only descriptor, its size and when its first line
    was written (for a file found at startup, its mtime: the first line's time is not known)."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._fd: int | None = None
        self.size = 0
        self.started_ms: int | None = None
        # After a failed write the file may end in a partial line: cut back to `size` first.
        self._torn = False
        self._pattern = re.compile(
            re.escape(path.stem)
            + r"-(\d{8}T\d{6}Z)-(\d{4,})"
            + re.escape(path.suffix)
            + r"(\.gz)?$"
        )
        self._next_sequence: int | None = None

    # -- the current file ----------------------------------------------------------------------

    def look(self) -> None:
        """Learn the size and age of a file already at `path` (it is appended to). A file
        moved away or deleted by someone else is let go: the next line starts a new one."""
        if self._fd is not None and not self._same_file():
            self.close()
            self.size = 0
            self.started_ms = None
        if self._fd is None and self.path.exists():
            self._open()

    def append(self, data: bytes, now_ms: int) -> None:
        """Write `data` whole (and fsync it) or, on an OSError, leave the file as it was."""
        self._open()
        assert self._fd is not None
        try:
            if self._torn:
                os.ftruncate(self._fd, self.size)
                self._torn = False
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._torn = True
            try:  # a line half written, or written but perhaps not on disk: take it back
                os.ftruncate(self._fd, self.size)
                self._torn = False
            except OSError:
                pass  # cut at the next append
            raise OSError(exc.errno, f"cannot write {self.path}: {exc.strerror}") from exc
        if self.size == 0 or self.started_ms is None:
            self.started_ms = now_ms
        self.size += len(data)

    def rotate(self, now_ms: int) -> Path:
        """Rename the current file to its rotated name (uncompressed, for `compress`); the next
        append starts a new file."""
        self.close()
        target = self._rotated_name(now_ms)
        try:
            os.rename(self.path, target)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot rotate {self.path}: {exc.strerror}") from exc
        if self._fsync:
            fsync_directory(self.path.parent)
        self.size = 0
        self.started_ms = None
        return target

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if self._torn:
                try:
                    os.ftruncate(fd, self.size)
                    self._torn = False
                except OSError:
                    pass
            os.close(fd)

    def _same_file(self) -> bool:
        assert self._fd is not None
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            return False
        ours = os.fstat(self._fd)
        return (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino)

    def _open(self) -> None:
        if self._fd is not None:
            return
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot create the directory {directory}: {exc.strerror}"
            ) from exc
        existed = self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open {self.path}: {exc.strerror}") from exc
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):  # replaced by a device or a pipe since the config check
            os.close(fd)
            raise OSError(errno.EINVAL, f"cannot write {self.path}: not a regular file")
        self._fd = fd
        self.size = _cut_torn_tail(fd, stat.st_size, self.path)
        self._torn = False
        if self.size and self.started_ms is None:
            self.started_ms = stat.st_mtime_ns // 1_000_000
        if not existed and self._fsync:
            fsync_directory(directory)

    def erase(self, drop: Callable[[bytes], bool]) -> int:
        """Rewrite the current file and every rotated one without the lines `drop` picks, each
        atomically (a temporary file renamed over it); returns how many lines went. The next
        append opens the rewritten file."""
        self.close()
        removed = 0
        if self.path.exists():
            removed += _rewrite(self.path, drop, packed=False)
        for _, path in self.rotated():
            removed += _rewrite(path, drop, packed=path.suffix == ".gz")
        return removed

    def count(self, holds: Callable[[bytes], bool]) -> int:
        """How many lines of the current and rotated files `holds` picks."""
        paths = ([self.path] if self.path.exists() else []) + [p for _, p in self.rotated()]
        found = 0
        for path in paths:
            opener: Callable[..., IO[bytes]] = gzip.open if path.suffix == ".gz" else open  # type: ignore[assignment]
            with opener(path, "rb") as lines:
                found += sum(1 for line in lines if holds(line))
        return found

    # -- rotated files -------------------------------------------------------------------------

    def rotated(self) -> list[tuple[int, Path]]:
        """Rotated files (compressed or not) as (sequence, path), oldest first."""
        if not self.path.parent.is_dir():
            return []
        found = []
        for entry in self.path.parent.iterdir():
            match = self._pattern.fullmatch(entry.name)
            if match:
                found.append((int(match.group(2)), entry))
        return sorted(found, key=lambda pair: (pair[0], pair[1].name))

    def uncompressed(self) -> list[Path]:
        """Rotated files still to compress (left by a rotation, or by a crash during one);
        half-written temporary files of a compression cut short are removed."""
        if not self.path.parent.is_dir():
            return []
        for entry in self.path.parent.iterdir():
            if entry.name.endswith(".gz" + GZIP_TEMP_SUFFIX) and self._pattern.fullmatch(
                entry.name[: -len(GZIP_TEMP_SUFFIX)]
            ):
                entry.unlink(missing_ok=True)
        return [path for _, path in self.rotated() if path.suffix != ".gz"]

    def compress(self, plain: Path) -> Path:
        """`plain` gzipped to `plain.gz`: written under a temporary name, fsynced and renamed,
        so a `.gz` is always complete; then `plain` is removed."""
        final = plain.with_name(plain.name + ".gz")
        if final.exists():  # compressed before a crash, not yet removed
            plain.unlink()
            return final
        temporary = final.with_name(final.name + GZIP_TEMP_SUFFIX)
        with open(plain, "rb") as source, open(temporary, "wb") as raw:
            with gzip.GzipFile(filename=plain.name, mode="wb", fileobj=raw, mtime=0) as packed:
                shutil.copyfileobj(source, packed, _COPY_CHUNK_BYTES)
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(temporary, final)
        fsync_directory(final.parent)
        plain.unlink()
        return final

    def prune(self, keep: int) -> list[Path]:
        """Delete all but the newest `keep` compressed rotated files; returns those deleted."""
        packed = [path for _, path in self.rotated() if path.suffix == ".gz"]
        doomed = packed[: max(0, len(packed) - keep)]
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed

    def _rotated_name(self, now_ms: int) -> Path:
        if self._next_sequence is None:
            self._next_sequence = max((seq for seq, _ in self.rotated()), default=0) + 1
        stamp = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
        while True:
            sequence, self._next_sequence = self._next_sequence, self._next_sequence + 1
            name = f"{self.path.stem}-{stamp}-{sequence:04d}{self.path.suffix}"
            target = self.path.with_name(name)
            if not target.exists() and not target.with_name(name + ".gz").exists():
                return target


def _rewrite(path: Path, drop: Callable[[bytes], bool], *, packed: bool) -> int:
    opener: Callable[..., IO[bytes]] = gzip.open if packed else open  # type: ignore[assignment]
    temporary = path.with_name(path.name + ERASE_TEMP_SUFFIX)
    removed = 0
    with opener(path, "rb") as source, opener(temporary, "wb") as target:
        for line in source:
            if drop(line):
                removed += 1
            else:
                target.write(line)
    if not removed:
        temporary.unlink()
        return 0
    with open(temporary, "rb+") as written:
        os.fsync(written.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)
    return removed


def _cut_torn_tail(fd: int, size: int, path: Path) -> int:
    """The size of the file up to its last newline, cut there: bytes after it are a write cut
    short by a crash (never recorded as delivered, so written again)."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - _COPY_CHUNK_BYTES)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    os.ftruncate(fd, end)
    log.warning("file_torn_tail_cut", file=str(path), bytes=size - end)
    return end


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in `directory` survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
