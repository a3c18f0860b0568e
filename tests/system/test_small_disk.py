"""A small disk: the daemon runs with its data folder on an 8 MiB tmpfs (mounted in a user and
mount namespace of its own, so no root is needed), and a 345-byte gzip of 100,000 empty events
must not fill it."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgspec
import pytest

from tests.helpers import WRITE_KEY, basic_auth, config_text, spawn_cdpd

pytestmark = pytest.mark.system

AUTH = {"Authorization": basic_auth(WRITE_KEY)}
DISK_BYTES = 8 * 1024 * 1024
FLOOR_BYTES = 1024 * 1024
MOUNT = 'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"'


def _namespace_prefix(disk: Path) -> list[str]:
    """A command prefix that runs the rest on a fresh tmpfs mounted at `disk`."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    prefix = [unshare, "--map-root-user", "--mount", "sh", "-c", MOUNT.format(size=DISK_BYTES)]
    probe = subprocess.run([*prefix, str(disk), "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.decode()}")
    return [*prefix, str(disk)]


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk"
    path.mkdir()
    return path


def _bomb() -> bytes:
    body = msgspec.json.encode({"batch": [{}] * 100_000})
    return gzip.compress(body, 9)


async def test_a_reject_bomb_writes_a_bounded_summary_and_every_source_stays_up(
    tmp_path: Path, disk: Path
) -> None:
    prefix = _namespace_prefix(disk)
    data_dir = disk / "var"
    config = tmp_path / "cdpd.toml"
    config.write_text(
        config_text(data_dir).replace(
            "min_free_disk_bytes = 0", f"min_free_disk_bytes = {FLOOR_BYTES}"
        )
    )
    bomb = _bomb()
    assert len(bomb) < 400
    daemon = await spawn_cdpd(config, prefix=prefix)
    outbox = data_dir / "outbox.sqlite3"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(10):
                headers = {**AUTH, "Content-Encoding": "gzip"}
                async with http.post(f"{daemon.url}/v1/batch", data=bomb, headers=headers) as r:
                    assert r.status == 200, await r.text()
            track = {"userId": "u1", "event": "Still Here", "messageId": "legit"}
            async with http.post(f"{daemon.url}/v1/track", json=track, headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"{daemon.url}/health") as resp:
                assert resp.status == 200
        pid = daemon.proc.pid
        per_request = _query(pid, outbox, "SELECT request_id, count(*) FROM rejects GROUP BY 1")
        summaries = _query(
            pid, outbox, "SELECT payload, reason FROM rejects WHERE reason_code = 'more_rejected'"
        )
        stored = _query(pid, outbox, "SELECT message_id FROM messages")
    finally:
        assert await daemon.stop() == 0
    assert len(per_request) == 10
    assert {count for _, count in per_request} == {101}  # 100 rows and one summary each
    assert len(summaries) == 10
    for payload, reason in summaries:
        counts = msgspec.json.decode(payload)
        assert sum(counts.values()) == 100_000 - 100
        assert "server.max_rejects_per_request" in reason
    assert stored == [["legit"]]


def _query(pid: int, path: Path, sql: str) -> list[list[object]]:
    """Rows of `sql` on the SQLite file at `path` as the daemon `pid` sees it (its tmpfs is
    only mounted in its own namespaces)."""
    script = (
        "import json, sqlite3, sys\n"
        "conn = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)\n"
        "print(json.dumps(conn.execute(sys.argv[2]).fetchall()))\n"
    )
    done = subprocess.run(
        [
            shutil.which("nsenter") or "nsenter",
            f"--target={pid}",
            "--user",
            "--mount",
            sys.executable,
            "-c",
            script,
            str(path),
            sql,
        ],
        capture_output=True,
        check=True,
    )
    rows: list[list[object]] = msgspec.json.decode(done.stdout)
    return rows


MARGIN_BYTES = 64 * 1024
FILL = """
import os, sys
fd, chunk = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT), b"x" * 4096
while True:
    try:
        os.write(fd, chunk)
    except OSError:
        break
os.close(fd)
"""
SPARE = """
import sys
with open(sys.argv[1], "wb") as spare:
    spare.write(b"s" * int(sys.argv[2]))
"""
FREE_UP_TO = """
import os, sys
spare, ballast, wanted = sys.argv[1], sys.argv[2], int(sys.argv[3])
def free():
    stats = os.statvfs(os.path.dirname(ballast))
    return stats.f_bavail * stats.f_frsize
os.unlink(spare)
with open(ballast, "ab") as more:
    more.write(b"x" * max(0, free() - wanted))
print(free())
"""


async def test_after_a_full_disk_freeing_the_floor_is_enough_to_ingest_again(
    tmp_path: Path, disk: Path
) -> None:
    prefix = _namespace_prefix(disk)
    data_dir = disk / "var"
    config = tmp_path / "cdpd.toml"
    config.write_text(
        config_text(data_dir).replace(
            "min_free_disk_bytes = 0", f"min_free_disk_bytes = {FLOOR_BYTES}"
        )
    )
    daemon = await spawn_cdpd(config, prefix=prefix)
    pid = daemon.proc.pid
    spare, ballast = str(disk / "spare"), str(disk / "ballast")
    _in_namespace(pid, SPARE, spare, str(2 * FLOOR_BYTES))  # to free later, on a full disk
    acked: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            status = await _fill_until_refused(http, daemon.url, acked)
            assert status == 503
            assert len(acked) > 100
            _in_namespace(pid, FILL, ballast)  # something else takes the rest of the disk
            assert await _track(http, daemon.url, "while-full") == 503
            free = int(
                _in_namespace(pid, FREE_UP_TO, spare, ballast, str(FLOOR_BYTES + MARGIN_BYTES))
            )
            assert FLOOR_BYTES < free <= FLOOR_BYTES + MARGIN_BYTES + 4096
            recovered = await _track_until_accepted(http, daemon.url, "after-freeing")
            assert recovered, "ingest stayed at 503 after freeing the floor's worth of space"
            acked.append("after-freeing")
        stored = _query(pid, data_dir / "outbox.sqlite3", "SELECT message_id FROM messages")
    finally:
        assert await daemon.stop() == 0
    assert {row[0] for row in stored} >= set(acked)


async def _track(http: aiohttp.ClientSession, url: str, message_id: str) -> int:
    track = {"userId": "u1", "event": "Disk", "messageId": message_id}
    async with http.post(f"{url}/v1/track", json=track, headers=AUTH) as resp:
        return resp.status


async def _fill_until_refused(http: aiohttp.ClientSession, url: str, acked: list[str]) -> int:
    padding = "p" * 2000
    for batch_number in range(10_000):
        ids = [f"m{batch_number}-{i}" for i in range(20)]
        batch = [
            {
                "type": "track",
                "userId": "u1",
                "event": "Fill",
                "messageId": message_id,
                "properties": {"padding": padding},
            }
            for message_id in ids
        ]
        async with http.post(f"{url}/v1/batch", json={"batch": batch}, headers=AUTH) as resp:
            if resp.status != 200:
                return resp.status
        acked.extend(ids)
    return 200


async def _track_until_accepted(http: aiohttp.ClientSession, url: str, message_id: str) -> bool:
    for _ in range(50):  # the space watch measures every second
        if await _track(http, url, message_id) == 200:
            return True
        await asyncio.sleep(0.1)
    return False


def _in_namespace(pid: int, script: str, *args: str) -> str:
    done = subprocess.run(
        [
            shutil.which("nsenter") or "nsenter",
            f"--target={pid}",
            "--user",
            "--mount",
            sys.executable,
            "-c",
            script,
            *args,
        ],
        capture_output=True,
        check=True,
    )
    return done.stdout.decode()
