"""`kill -9` while the file destination writes, then a restart: every message is in the files,
every line is whole JSON, and the only repeats are the batch written but not yet recorded."""

from __future__ import annotations

import asyncio
import gzip
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.helpers import config_file, post_tracks, query, spawn_cdpd

pytestmark = pytest.mark.system

MESSAGES = 5000
BATCH_SIZE = 100
KILL_AFTER_LINES = 1000


async def poll(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    """Another process writes what `condition` reads: there is nothing to wait on but that."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


def lines(directory: Path) -> list[bytes]:
    """Every line written, rotated files first (by sequence), then the current file."""
    rotated = sorted(directory.glob("events-*.ndjson.gz"), key=lambda p: p.name.split("-")[2])
    data = b"".join(gzip.decompress(p.read_bytes()) for p in rotated)
    current = directory / "events.ndjson"
    if current.exists():
        data += current.read_bytes()
    assert data.endswith(b"\n")
    return data.splitlines()


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def test_kill_9_while_writing_loses_nothing(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "out"
    entry = f'[[destinations]]\nname = "file"\ntype = "file"\npath = "{out / "events.ndjson"}"\n'
    # Slow enough to be killed in the middle; rotations on the way.
    entry += f"batch_size = {BATCH_SIZE}\nrate_limit_per_s = 20\nmax_bytes = 200000\n"
    config = config_file(tmp_path, data_dir, entry)
    daemon = await spawn_cdpd(config)
    await post_tracks(daemon.url, MESSAGES)

    await poll(lambda: line_count(out / "events.ndjson") >= KILL_AFTER_LINES)
    daemon.proc.kill()
    assert await daemon.proc.wait() == -9
    # The lane's position: every message at or below it is written (README, the outbox file).
    position = "SELECT seq FROM consumers WHERE name = 'delivery:file'"
    assert query(data_dir, position)[0][0] < MESSAGES  # killed in the middle

    again = await spawn_cdpd(config)
    await poll(lambda: query(data_dir, position) == [(MESSAGES,)])
    assert await again.stop() == 0

    ids = [msgspec.json.decode(line)["messageId"] for line in lines(out)]  # all whole JSON
    assert set(ids) == {f"m{n}" for n in range(MESSAGES)}
    repeated = [m for m, count in Counter(ids).items() if count > 1]
    assert len(repeated) <= BATCH_SIZE  # one batch at most was written but not recorded
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == [f"m{n}" for n in range(MESSAGES)]  # the outbox's order
    assert not list(out.glob("*.tmp"))
