"""The file destination's blocking side: appends that fail leave no partial line, a file moved
away is let go, rotated names keep counting, compression never leaves a .gz half written."""

from __future__ import annotations

import errno
import gzip
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cdpd.destinations.filelog import LogFile
from cdpd.model.timestamps import parse_ms

NOW_MS = parse_ms("2026-12-05T23:15:00.000Z")


@contextmanager
def file_size_limit(limit_bytes: int) -> Iterator[None]:
    """Writes past `limit_bytes` fail with EFBIG (a disk filling up mid-write, as it were)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_write_cut_short_is_taken_back_whole(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "events.ndjson", fsync=True)
    log.append(b'{"n":1}\n', NOW_MS)
    with file_size_limit(20), pytest.raises(OSError, match="File too large") as failed:
        log.append(b'{"n":2,"pad":"xxxxxxxxxxxxxxxxxxxx"}\n', NOW_MS)  # 12 of its bytes fit
    assert failed.value.errno == errno.EFBIG
    assert failed.value.strerror == f"cannot write {log.path}: File too large"
    assert log.path.read_bytes() == b'{"n":1}\n'
    log.append(b'{"n":3}\n', NOW_MS)
    log.close()
    assert log.path.read_bytes() == b'{"n":1}\n{"n":3}\n'


def test_an_existing_file_is_appended_to_and_aged_by_its_mtime(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b'{"n":0}\n')
    log = LogFile(path, fsync=False)
    log.look()
    assert log.size == 8
    assert log.started_ms == path.stat().st_mtime_ns // 1_000_000
    log.append(b'{"n":1}\n', NOW_MS)
    log.close()
    assert path.read_bytes() == b'{"n":0}\n{"n":1}\n'


def test_a_last_line_cut_short_by_a_crash_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b'{"n":0}\n{"n":1}\n{"n":2,"pa')
    log = LogFile(path, fsync=True)
    with capture_logs() as logs:
        log.look()
    assert log.size == 16
    assert logs == [
        {"event": "file_torn_tail_cut", "file": str(path), "bytes": 10, "log_level": "warning"}
    ]
    log.append(b'{"n":2}\n', NOW_MS)
    log.close()
    assert path.read_bytes() == b'{"n":0}\n{"n":1}\n{"n":2}\n'


def test_a_file_moved_away_is_let_go(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "events.ndjson", fsync=False)
    log.append(b'{"n":1}\n', NOW_MS)
    log.path.rename(tmp_path / "taken.ndjson")
    log.look()
    assert (log.size, log.started_ms) == (0, None)
    log.append(b'{"n":2}\n', NOW_MS + 1)
    log.close()
    assert log.path.read_bytes() == b'{"n":2}\n'
    assert (tmp_path / "taken.ndjson").read_bytes() == b'{"n":1}\n'


def test_rotated_names_count_on_from_the_highest_on_disk(tmp_path: Path) -> None:
    (tmp_path / "events-20261201T000000Z-0041.ndjson.gz").write_bytes(b"")
    (tmp_path / "events-20261130T000000Z-0007.ndjson.gz").write_bytes(b"")
    (tmp_path / "other-20261201T000000Z-0099.ndjson.gz").write_bytes(b"")  # not ours
    log = LogFile(tmp_path / "events.ndjson", fsync=True)
    log.append(b"1\n", NOW_MS)
    first = log.rotate(NOW_MS)
    log.append(b"2\n", NOW_MS)
    second = log.rotate(NOW_MS)
    assert (first.name, second.name) == (
        "events-20261205T231500Z-0042.ndjson",
        "events-20261205T231500Z-0043.ndjson",
    )
    assert not log.path.exists()
    assert [seq for seq, _ in log.rotated()] == [7, 41, 42, 43]


def test_compression_is_atomic_and_survives_a_crash_either_side(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "events.ndjson", fsync=True)
    log.append(b'{"n":1}\n', NOW_MS)
    plain = log.rotate(NOW_MS)
    half = tmp_path / (plain.name + ".gz.tmp")
    half.write_bytes(b"\x1f\x8b")  # a compression cut short
    assert log.uncompressed() == [plain]
    assert not half.exists()
    packed = log.compress(plain)
    assert gzip.decompress(packed.read_bytes()) == b'{"n":1}\n'
    assert not plain.exists()
    # Killed after the rename, before the plain file went: the .gz stays, the plain goes.
    plain.write_bytes(b'{"n":1}\n')
    assert log.compress(plain) == packed
    assert not plain.exists()
    assert log.uncompressed() == []


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "events.ndjson", fsync=False)
    for n in range(1, 5):
        log.append(b"x\n", NOW_MS)
        log.compress(log.rotate(NOW_MS + n * 1000))
    removed = log.prune(2)
    assert [p.name for p in removed] == [
        "events-20261205T231501Z-0001.ndjson.gz",
        "events-20261205T231502Z-0002.ndjson.gz",
    ]
    assert [p.name for _, p in log.rotated()] == [
        "events-20261205T231503Z-0003.ndjson.gz",
        "events-20261205T231504Z-0004.ndjson.gz",
    ]
