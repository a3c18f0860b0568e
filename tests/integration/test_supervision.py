"""A crashing background service is logged, counted in /metrics and restarted while the daemon
keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import msgspec
from structlog.testing import capture_logs

from cdpd.app import running
from cdpd.config import Config
from tests.helpers import WRITE_KEY, FakeClock, basic_auth, stored_payloads

AUTH = {"Authorization": basic_auth(WRITE_KEY)}
PLENTY = 10**12


class Disk:
    """The space watch's `free_bytes` (called on a worker thread): each call takes the next
    scripted answer, bytes free or an exception to raise; the last answer repeats."""

    def __init__(self, *answers: int | Exception) -> None:
        self._answers = list(answers)
        self.calls = 0

    def __call__(self, _: Path) -> int:
        self.calls += 1
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def statvfs_error() -> OSError:
    return OSError(errno.EIO, "Input/output error")


async def track(http: aiohttp.ClientSession, url: str, message_id: str) -> int:
    body = {"userId": "u1", "event": "Tried", "messageId": message_id}
    async with http.post(f"{url}/v1/track", json=body, headers=AUTH) as resp:
        return resp.status


async def test_a_failing_space_watch_restarts_while_ingest_keeps_answering(
    make_config: Callable[..., Config], http: aiohttp.ClientSession, data_dir: Path
) -> None:
    config = make_config('[admin]\ntoken = "adm1n"\n')
    storage = msgspec.structs.replace(config.storage, min_free_disk_bytes=1000)
    config = msgspec.structs.replace(config, storage=storage)
    # The start-up check passes; the watch's first two checks fail, then the disk is fine.
    disk = Disk(PLENTY, statvfs_error(), statvfs_error(), PLENTY)
    clock = FakeClock()
    with capture_logs() as logs:
        async with running(config, clock=clock, free_bytes=disk) as server:
            await server.restarts.wait_for("space-watch", 1)
            assert await track(http, server.url, "m1") == 200
            clock.advance(0.5)  # the first pause: the restarted watch fails again
            await server.restarts.wait_for("space-watch", 2)
            assert await track(http, server.url, "m2") == 200
            async with http.get(f"{server.url}/health") as resp:
                assert resp.status == 200
            async with http.get(f"{server.url}/metrics") as resp:
                metrics = await resp.text()
            bearer = {"Authorization": "Bearer adm1n"}
            async with http.get(f"{server.url}/admin/services", headers=bearer) as resp:
                services = (await resp.json())["services"]
            clock.advance(1.0)  # the second pause doubles; the third run finds the disk fine
    assert [p["messageId"] for p in stored_payloads(data_dir)] == ["m1", "m2"]
    assert 'cdpd_service_restarts_total{service="space-watch"} 2.0' in metrics
    assert 'cdpd_service_restarts_total{service="outbox-writer"} 0.0' in metrics
    assert {"name": "space-watch", "restarts": 2} in services
    assert {"name": "outbox-writer", "restarts": 0} in services
    failed = [e for e in logs if e["event"] == "service_failed"]
    assert [(e["service"], e["restart_in_s"], e["restarts"]) for e in failed] == [
        ("space-watch", 0.5, 1),
        ("space-watch", 1.0, 2),
    ]
    assert all(e["exc_info"] is True and e["log_level"] == "error" for e in failed)


async def test_a_failing_warehouse_schedule_restarts_and_syncs_once_repaired(
    make_config: Callable[..., Config], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "warehouse.sqlite3"
    config = make_config(
        f'[[warehouses]]\nname = "wh"\ntype = "sqlite"\npath = "{path}"\ninterval_s = 3600\n'
    )
    async with running(config) as server:
        await server.warehouses.wait_for_syncs("wh", 1)
    # (the daemon's pruner reads the warehouse's position too: wait out its short lock)
    with _writing(path) as conn:  # a sync report that no longer decodes
        conn.execute("UPDATE _cdpd_syncs SET report = '{\"warehouse\": 1}'")
    clock = FakeClock()
    with capture_logs() as logs:
        async with running(config, clock=clock) as server:
            await server.restarts.wait_for("warehouse-wh", 1)
            assert await track(http, server.url, "m1") == 200
            # in a thread: the daemon shares this loop, and what holds the lock needs it
            await asyncio.to_thread(_delete_syncs, path)
            clock.advance(0.5)  # the restarted schedule finds no sync and syncs at once
            (report,) = await server.warehouses.wait_for_syncs("wh", 1)
    assert report.status == "success"
    assert report.messages == 1
    (failed,) = [e for e in logs if e["event"] == "service_failed"]
    assert failed["service"] == "warehouse-wh"


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[sqlite3.Connection]:
    """A write transaction taken up front (BEGIN IMMEDIATE), so that it waits for the daemon's
    load to commit: a deferred one that read first is refused at once ("database is locked")
    when a load commits in between, whatever the timeout."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def _delete_syncs(path: Path) -> None:
    with _writing(path) as conn:
        conn.execute("DELETE FROM _cdpd_syncs")
