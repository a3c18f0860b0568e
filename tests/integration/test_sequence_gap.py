"""An outbox whose sequence went backwards (its WAL lost, here) under a warehouse that loaded
past it: the warehouse refuses to load, the log, `/health` and `cdpd outbox stats` say so, the
outbox is not pruned on its say, and `cdpd warehouse rewind` recovers without losing a
message."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest
from structlog.testing import capture_logs

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.warehouse.position import prunable_seq
from tests.helpers import WRITE_KEY, WarehouseProbe, basic_auth, outbox_path

AUTH = {"Authorization": basic_auth(WRITE_KEY)}


async def _send(http: aiohttp.ClientSession, url: str, numbers: range) -> None:
    batch = [
        {"type": "track", "userId": "u", "event": "Ordered", "messageId": f"m{n}"} for n in numbers
    ]
    async with http.post(f"{url}/v1/batch", json={"batch": batch}, headers=AUTH) as resp:
        assert resp.status == 200


async def _loaded(warehouse: WarehouseProbe) -> list[str]:
    rows = await warehouse.fetch(f"SELECT id FROM {warehouse.name('website', 'tracks')}")
    return sorted(row[0] for row in rows)


WAL_HEADER_BYTES = 32


def _crash_image(data_dir: Path, into: Path) -> None:
    """Copy the outbox file and its WAL as they are now (the last commits only in the WAL)."""
    path = outbox_path(data_dir)
    into.mkdir()
    for name in (path.name, path.name + "-wal"):
        shutil.copyfile(path.with_name(name), into / name)


def _restore_with_a_bad_wal(data_dir: Path, image: Path, wal: str) -> None:
    """Put the crash image back with its WAL lost, or with every frame after the WAL's header
    overwritten (SQLite drops frames whose checksums do not match: the commits are gone)."""
    path = outbox_path(data_dir)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(image / path.name, path)
    if wal == "corrupted":
        frames = (image / (path.name + "-wal")).read_bytes()
        garbled = frames[:WAL_HEADER_BYTES] + b"\x5a" * (len(frames) - WAL_HEADER_BYTES)
        path.with_name(path.name + "-wal").write_bytes(garbled)


@pytest.mark.parametrize("wal", ["lost", "corrupted"])
async def test_a_lost_or_corrupted_wal_is_detected_refused_and_recovered(
    wal: str,
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(warehouse.toml)
    config_path = str(tmp_path / "cdpd.toml")
    async with running(config) as server:  # m1..m3 loaded, then closed: in the database file
        await _send(http, server.url, range(1, 4))
        assert (await server.warehouses.sync_now("wh")).position == 3
    image = tmp_path / "crash"
    async with running(config) as server:  # m4..m6 loaded; their commits only in the WAL
        await _send(http, server.url, range(4, 7))
        assert (await server.warehouses.sync_now("wh")).position == 6
        await asyncio.to_thread(_crash_image, data_dir, image)
    _restore_with_a_bad_wal(data_dir, image, wal)

    with capture_logs() as logs:
        async with running(config) as server:
            await server.warehouses.wait_for_syncs("wh", 0)
            async with asyncio.timeout(30):  # the start-up check runs as the schedule starts
                while not server.warehouses.gaps:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await _send(http, server.url, range(7, 9))  # seqs 4 and 5: the warehouse passed them
            report = await server.warehouses.sync_now("wh")
            async with http.get(f"{server.url}/health") as resp:
                health = (resp.status, await resp.json())
            assert await prunable_seq(config) == 0  # the warehouse's position says nothing now
    assert report.status == "failure"
    assert "cdpd warehouse rewind wh" in (report.error or "")
    assert await _loaded(warehouse) == ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert health[0] == 200
    assert health[1]["status"] == "degraded"
    (problem,) = health[1]["problems"]
    assert problem["code"] == "outbox_sequence_went_backwards"
    assert problem["warehouse"] == "wh"
    assert "seq 6" in problem["message"]
    assert "seq 3" in problem["message"]  # the outbox ended there when it came back
    lines = [e for e in logs if e["event"] == "outbox_sequence_went_backwards"]
    assert lines
    assert lines[0]["log_level"] == "error"
    assert (lines[0]["warehouse_position"], lines[0]["outbox_seq"]) == (6, 3)
    assert lines[0]["rewind_to"] == 3

    capsys.readouterr()  # the daemon's own log lines
    code = await asyncio.to_thread(cli.main, ["outbox", "stats", "--json", "--config", config_path])
    assert code == 0
    stats = msgspec.json.decode(capsys.readouterr().out)
    assert stats["last_seq"] == 5
    (gap,) = stats["sequence_gaps"]
    assert (gap["warehouse"], gap["warehouse_position"], gap["rewind_to"]) == ("wh", 6, 3)
    await asyncio.to_thread(cli.main, ["outbox", "stats", "--config", config_path])
    assert "PROBLEM   warehouse 'wh' has loaded up to seq 6" in capsys.readouterr().out

    # The documented recovery: rewind to where the outbox last recorded the warehouse, load.
    code = await asyncio.to_thread(cli.main, ["warehouse", "rewind", "wh", "--config", config_path])
    assert code == 0
    assert "wh: position 6 -> 3" in capsys.readouterr().out
    async with running(config) as server:
        report = await server.warehouses.sync_now("wh")
        async with http.get(f"{server.url}/health") as resp:
            assert await resp.json() == {"status": "ok"}
    assert report.status == "success"
    assert await _loaded(warehouse) == ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"]


async def test_rewind_refuses_to_move_forward_or_past_the_outbox(
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(warehouse.toml)
    config_path = str(tmp_path / "cdpd.toml")
    async with running(config) as server:
        await _send(http, server.url, range(1, 4))
        await server.warehouses.sync_now("wh")
    capsys.readouterr()
    for to, wording in (("9", "not 9"), ("-1", "not -1")):
        args = ["warehouse", "rewind", "wh", "--to", to, "--config", config_path]
        assert await asyncio.to_thread(cli.main, args) == 2
        assert wording in capsys.readouterr().err
    args = ["warehouse", "rewind", "wh", "--to", "1", "--config", config_path]
    assert await asyncio.to_thread(cli.main, args) == 0
    args = ["warehouse", "rewind", "wh", "--to", "2", "--config", config_path]
    assert await asyncio.to_thread(cli.main, args) == 2
    assert "only moves back" in capsys.readouterr().err
