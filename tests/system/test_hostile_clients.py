"""Clients that try to exhaust the daemon: oversized request heads and slowloris. The daemon
runs as its own process so its memory (RSS) can be read; `/health` and a real client must keep
being served throughout, and the attack is logged, rate-limited."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.helpers import WRITE_KEY, Daemon, basic_auth, config_text, spawn_cdpd

pytestmark = pytest.mark.system

AUTH = {"Authorization": basic_auth(WRITE_KEY)}
OPEN = b"(still open)"
LIMITS = """
max_connections = 300
header_timeout_s = 2.0
keepalive_timeout_s = 5.0
"""


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@asynccontextmanager
async def _daemon(tmp_path: Path, data_dir: Path) -> AsyncIterator[Daemon]:
    config = tmp_path / "cdpd.toml"
    config.write_text(config_text(data_dir).replace("[storage]", LIMITS + "[storage]", 1))
    daemon = await spawn_cdpd(config)
    try:
        yield daemon
    finally:
        assert await daemon.stop() == 0


async def _served(daemon: Daemon, http: aiohttp.ClientSession, n: int) -> float:
    """`/health` answers and a track is stored; returns the slower of the two, in seconds.

    The real client runs on a thread of its own and times itself there: on the test's event
    loop its answer would wait behind hundreds of attacking tasks, timing the test, not cdpd."""
    del http  # (kept for the callers' symmetry with a normal client)
    return await asyncio.to_thread(_served_on_a_thread, daemon.url, n)


def _served_on_a_thread(url: str, n: int) -> float:
    address = urlsplit(url)
    assert address.hostname is not None
    started = time.monotonic()
    assert _status(address.hostname, address.port, "GET", "/health", None) == 200
    health_s = time.monotonic() - started
    track = json.dumps({"userId": "u", "event": "Legit", "messageId": f"legit-{n}"}).encode()
    started = time.monotonic()
    assert _status(address.hostname, address.port, "POST", "/v1/track", track) == 200
    return max(health_s, time.monotonic() - started)


def _status(host: str, port: int | None, method: str, path: str, body: bytes | None) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        headers = {**AUTH, "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


async def _open(daemon: Daemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(daemon.url)
    assert address.hostname is not None
    assert address.port is not None
    return await asyncio.open_connection(address.hostname, address.port)


async def _answer(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """What the daemon says before it closes the connection: b"" when the close reset the
    connection (the client was still sending), OPEN when it was not closed in `timeout_s`."""
    with suppress(ConnectionError):
        try:
            return await asyncio.wait_for(reader.read(), timeout_s)
        except TimeoutError:
            return OPEN
    return b""


async def test_oversized_request_heads_are_cut_and_memory_stays_bounded(
    tmp_path: Path, data_dir: Path
) -> None:
    """Each connection sends ~1 MB of headers (120 fields just under aiohttp's per-field limit)
    and never ends the head: each is answered 431 once past server.max_header_bytes."""
    async with _daemon(tmp_path, data_dir) as daemon, aiohttp.ClientSession() as http:
        await _served(daemon, http, 0)
        rss_before = _rss_bytes(daemon.proc.pid)
        field = b"X-Pad: " + b"p" * 8000 + b"\r\n"

        async def attack() -> bytes:
            reader, writer = await _open(daemon)
            try:
                writer.write(b"POST /v1/track HTTP/1.1\r\nHost: cdpd\r\n")
                for _ in range(120):
                    writer.write(field)
                    await writer.drain()
                return await _answer(reader, 10)
            except ConnectionError:
                return await _answer(reader, 1)
            finally:
                writer.close()

        attackers = [asyncio.create_task(attack()) for _ in range(400)]
        await asyncio.sleep(0.5)
        worst_s = max([await _served(daemon, http, n) for n in range(1, 6)])
        answers = await asyncio.gather(*attackers)
        rss_after = _rss_bytes(daemon.proc.pid)
        assert worst_s < 2.0
        assert await _served(daemon, http, 99) < 2.0
    # A close while the client is still sending resets the connection, losing the 431.
    assert all(a.startswith(b"HTTP/1.1 431 ") or a == b"" for a in answers)
    assert rss_after - rss_before < 64 * 1024 * 1024, (rss_before, rss_after)
    lines = [line for line in daemon.log_lines if line.get("event") == "http_connections_cut"]
    assert lines, "the attack was not logged"
    assert len(lines) <= 3  # one line per 10 s, with counts
    cut = {
        reason: sum(line["cut"].get(reason, 0) for line in lines)
        for reason in ("headers_too_large", "connection_limit")
    }
    assert sum(cut.values()) == len(answers)  # some made room for newer ones at the limit
    assert cut["headers_too_large"] > len(answers) // 2


async def test_slowloris_connections_are_cut_and_real_clients_keep_being_served(
    tmp_path: Path, data_dir: Path
) -> None:
    """600 connections (twice server.max_connections) each send a header byte now and then:
    at the limit the oldest waiting ones make room, and each is cut 408 after
    server.header_timeout_s; /health and a real client are served all along."""
    async with _daemon(tmp_path, data_dir) as daemon, aiohttp.ClientSession() as http:
        rss_before = _rss_bytes(daemon.proc.pid)

        async def slowloris() -> bytes:
            reader, writer = await _open(daemon)
            try:
                writer.write(b"POST /v1/track HTTP/1.1\r\nHost: cdpd\r\n")
                for _ in range(40):  # 20 s if never cut
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.5)
                    if reader.at_eof() or writer.is_closing():
                        break
                return await _answer(reader, 1)
            except ConnectionError:
                return await _answer(reader, 1)
            finally:
                writer.close()

        started = time.monotonic()
        attackers = []
        for _ in range(6):
            attackers += [asyncio.create_task(slowloris()) for _ in range(100)]
            await asyncio.sleep(0.2)
        timings = []
        for n in range(10):
            timings.append(await _served(daemon, http, n))
            await asyncio.sleep(0.2)
        answers = await asyncio.gather(*attackers)
        lasted_s = time.monotonic() - started
        rss_after = _rss_bytes(daemon.proc.pid)
        assert max(timings) < 2.0
    assert lasted_s < 10, "slow connections were left open"
    assert OPEN not in answers
    assert all(a.startswith((b"HTTP/1.1 408 ", b"HTTP/1.1 503 ")) or a == b"" for a in answers)
    assert rss_after - rss_before < 64 * 1024 * 1024
    lines = [line for line in daemon.log_lines if line.get("event") == "http_connections_cut"]
    assert 1 <= len(lines) <= 3
    counted = {
        reason: sum(line["cut"].get(reason, 0) for line in lines)
        for reason in ("header_timeout", "connection_limit")
    }
    assert sum(counted.values()) == len(answers)
    assert counted["connection_limit"] >= 250  # 600 attackers, room for 300
