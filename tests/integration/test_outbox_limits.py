"""When the outbox cannot take more, cdpd answers 503 with Retry-After, keeps what it accepted,
and takes messages again once there is room."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from cdpd.app import running
from cdpd.config import Config
from cdpd.outbox import schema, space
from cdpd.outbox.space import SpaceWatch
from cdpd.outbox.writer import OutboxUnavailable, OutboxWriter
from tests.helpers import WRITE_KEY, basic_auth, outbox_path, query
from tests.helpers import FakeClock as TimerClock

AUTH = {"Authorization": basic_auth(WRITE_KEY)}


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def batch_of(start: int, count: int) -> bytes:
    items = [
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": f"m-{n}",
            "properties": {"pad": "x" * 400},
        }
        for n in range(start, start + count)
    ]
    return msgspec.json.encode({"batch": items})


async def test_full_outbox_answers_503_keeps_data_and_recovers(
    make_config: Callable[..., Config], http: aiohttp.ClientSession, data_dir: Path
) -> None:
    config = make_config("")
    storage = msgspec.structs.replace(
        config.storage, max_outbox_bytes=256 * 1024, full_retry_after_s=7
    )
    clock = FakeClock()
    acked = 0
    async with running(msgspec.structs.replace(config, storage=storage), clock_s=clock) as server:
        url = f"{server.url}/v1/batch"
        for start in range(0, 100_000, 50):
            async with http.post(url, data=batch_of(start, 50), headers=AUTH) as resp:
                if resp.status != 200:
                    assert resp.status == 503
                    assert resp.headers["Retry-After"] == "7"
                    assert (await resp.json())["code"] == "outbox_full"
                    break
                acked += 50
        else:
            raise AssertionError("the outbox never filled up")
        assert acked > 0
        assert query(data_dir, "SELECT count(*) FROM messages") == [(acked,)]

        # Until Retry-After has passed, cdpd answers 503 at once, without touching SQLite.
        async with http.post(url, data=batch_of(10**6, 1), headers=AUTH) as resp:
            assert resp.status == 503
        async with http.get(f"{server.url}/health") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "outbox_full"

        # Room returns (as pruning would make it) and time passes: writes resume.
        # The daemon's own writers (pruner, checkpoint) may hold the write lock for a moment
        # on a busy machine: wait for it in a thread, so that the daemon's event loop (this
        # test's loop) goes on and can finish what holds the lock.
        await asyncio.to_thread(_delete_up_to, outbox_path(data_dir), acked // 2)
        clock.now_s += 8
        async with http.post(url, data=batch_of(10**6, 10), headers=AUTH) as resp:
            assert resp.status == 200
        async with http.get(f"{server.url}/health") as resp:
            assert resp.status == 200
    remaining = acked - acked // 2 + 10
    assert query(data_dir, "SELECT count(*) FROM messages") == [(remaining,)]


async def test_disk_floor_refuses_before_the_disk_is_full(
    make_config: Callable[..., Config], http: aiohttp.ClientSession, data_dir: Path
) -> None:
    config = make_config("")
    storage = msgspec.structs.replace(config.storage, min_free_disk_bytes=2**62)
    async with (
        running(msgspec.structs.replace(config, storage=storage)) as server,
        http.post(f"{server.url}/v1/batch", data=batch_of(0, 5), headers=AUTH) as resp,
    ):
        assert resp.status == 503
        assert "Retry-After" in resp.headers
        body = await resp.json()
    assert body["code"] == "disk_full"
    assert "storage.min_free_disk_bytes" in body["message"]
    assert query(data_dir, "SELECT count(*) FROM messages") == [(0,)]


async def test_space_watch_refuses_and_recovers(tmp_path: Path) -> None:
    free = {"bytes": 10}

    def measure(_: Path) -> int:
        return free["bytes"]

    async with schema.connect(tmp_path / "outbox.sqlite3") as conn:
        writer = OutboxWriter(
            conn, commit_max_rows=10, dedup_window_s=0, full_retry_after_s=3, clock_s=lambda: 0.0
        )
        watch = SpaceWatch(writer, tmp_path, min_free_bytes=100, retry_after_s=3, measure=measure)
        await watch.check()
        assert _refusal(writer) == "disk_full"
        free["bytes"] = 1000
        await watch.check()
        assert _refusal(writer) is None


async def test_what_the_wal_owes_the_database_file_counts_as_used_until_checkpointed(
    tmp_path: Path,
) -> None:
    """A reader on older pages (a lane's read-only connection) keeps a checkpoint from copying
    the WAL into the database file; the file will grow by that much once it can, so the space
    watch counts it as used until then. While refusing, the WAL file is emptied too."""
    path = tmp_path / "outbox.sqlite3"
    floor = 1024 * 1024
    free = {"bytes": floor + 64 * 1024}
    async with (
        schema.connect(path) as conn,
        space.checkpointer(path) as checkpoint,
    ):
        await space.bound_the_wal(conn, floor)
        async with conn.execute("PRAGMA wal_autocheckpoint") as cursor:
            assert await cursor.fetchone() == (64,)  # a quarter of the floor, in 4 KiB pages
        writer = OutboxWriter(
            conn, commit_max_rows=10, dedup_window_s=0, full_retry_after_s=3, clock_s=lambda: 0.0
        )
        watch = SpaceWatch(
            writer,
            tmp_path,
            min_free_bytes=floor,
            retry_after_s=3,
            measure=lambda _: free["bytes"],
            checkpoint=checkpoint,
        )
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM messages").fetchall()  # holds its snapshot
            await conn.execute("CREATE TABLE filler (data BLOB)")
            await conn.execute("INSERT INTO filler VALUES (zeroblob(200000))")
            await watch.check()
            assert _refusal(writer) == "disk_full"  # 200 kB owed, 64 kB above the floor
            reader.execute("COMMIT")
        finally:
            reader.close()
        await watch.check()  # copies the pages, and empties the WAL while refusing
        assert _refusal(writer) is None
        assert path.with_name("outbox.sqlite3-wal").stat().st_size == 0


def _refusal(writer: OutboxWriter) -> Any:
    try:
        writer.check_accepting()
    except OutboxUnavailable as exc:
        return exc.code
    return None


async def test_free_space_is_counted_down_at_each_commit(
    make_config: Callable[..., Config], http: aiohttp.ClientSession, data_dir: Path
) -> None:
    """Between two measurements of the disk, a burst cannot run it past the floor: each commit
    counts what it writes against the space last measured."""
    floor = 10 * 1024 * 1024
    free = {"bytes": floor + 100 * 1024}  # above the floor, but not by two batches' worth

    def measure(_: Path) -> int:
        return free["bytes"]

    config = make_config("")
    storage = msgspec.structs.replace(config.storage, min_free_disk_bytes=floor)
    config = msgspec.structs.replace(config, storage=storage)
    clock = TimerClock()
    async with running(config, free_bytes=measure, clock=clock) as server:
        url = f"{server.url}/v1/batch"
        async with http.post(url, data=batch_of(0, 50), headers=AUTH) as resp:
            assert resp.status == 200
        async with http.post(url, data=batch_of(100, 50), headers=AUTH) as resp:
            assert resp.status == 503
            assert (await resp.json())["code"] == "disk_full"
        clock.advance(1.0)  # the next measurement: the disk (here) still has the same room
        async with asyncio.timeout(30):
            while True:
                async with http.get(f"{server.url}/health") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.02)
        async with http.post(url, data=batch_of(200, 1), headers=AUTH) as resp:
            assert resp.status == 200
    assert query(data_dir, "SELECT count(*) FROM messages") == [(51,)]


def _delete_up_to(path: Path, seq: int) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn, conn:
        conn.execute("DELETE FROM messages WHERE seq <= ?", (seq,))
