"""`cdpd outbox stats|tail` and `cdpd rejects` with a JetStream config: what a real node took,
read from a real three-server cluster in the same output as on SQLite."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import pytest

from cdpd import cli
from cdpd.cluster.layout import Layout
from cdpd.cluster.node import running_node
from tests.cluster_support import jetstream_config, jetstream_text
from tests.helpers import PROJECT_ROOT, WRITE_KEY, basic_auth
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")  # the node's, on the same stdout
AUTH = {"Authorization": basic_auth(WRITE_KEY)}
BATCH = [
    {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-1"},
    {"type": "identify", "userId": "u1", "messageId": "m-2"},
    {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "m-3"},
    {"type": "track", "userId": "u1", "messageId": "m-4"},  # no event: rejected
    {"type": "track", "userId": "zoë 100%", "event": "Ordered", "messageId": "m-5"},
]


async def test_outbox_stats_tail_and_rejects_read_the_cluster(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "cdpd.toml"
    async with Sink() as sink:
        hook = f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{sink.url}"\n'
        config = jetstream_config(path, jetstream_text(tmp_path / "var", js_cluster.urls, hook))
        async with running_node(config) as node:
            await _post(http, node.url, BATCH)
            await sink.wait_for_delivered(4)
            capsys.readouterr()  # the node's log lines

            errors: list[str] = []

            async def cli_lines(*args: str, code: int = 0) -> list[str]:
                assert await asyncio.to_thread(cli.main, [*args, "--config", str(path)]) == code
                out, err = capsys.readouterr()
                errors.append(err)
                return [line for line in out.splitlines() if not LOG_LINE.match(line)]

            async def tailed(*options: str) -> list[str]:
                lines = await cli_lines("outbox", "tail", *options)
                return [msgspec.json.decode(line)["message_id"] for line in lines]

            # The newest messages, as JSON lines in the SQLite command's form.
            lines = await cli_lines("outbox", "tail", "-n", "2")
            third, fifth = (msgspec.json.decode(line) for line in lines)
            assert (third["message_id"], fifth["message_id"]) == ("m-3", "m-5")
            assert third["payload"]["name"] == "Home"
            assert (third["type"], third["event"], third["anonymous_id"]) == ("page", "Home", "a1")
            assert (fifth["user_id"], fifth["seq"]) == ("zoë 100%", 4)
            assert set(third) == {
                "seq", "message_id", "source", "type", "event", "user_id", "anonymous_id",
                "received_at", "payload",
            }  # fmt: skip
            assert await tailed() == ["m-1", "m-2", "m-3", "m-5"]
            assert await tailed("--type", "track") == ["m-1", "m-5"]
            assert await tailed("--user", "a1") == ["m-3"]
            assert await tailed("--user", "u1", "-n", "1") == ["m-2"]
            assert await tailed("--user", "zoë 100%", "--json") == ["m-5"]
            assert await tailed("--event", "Signed Up", "--source", "website") == ["m-1"]
            assert await tailed("--source", "backend") == []
            assert await tailed("-n", "0") == []
            assert await cli_lines("outbox", "tail", "-n", "-1", code=2) == []
            assert "-n must be 0 or more" in errors[-1]

            await _follow(http, node.url, path)  # stores m-6 and m-7
            await sink.wait_for_delivered(6)

            # Stats: the stream's figures in the SQLite layout, and what is not kept here.
            await _settled(js_cluster.urls, "delivery_hook")
            text = await cli_lines("outbox", "stats")
            assert text[0].startswith(f"stream    CDPD on {js_cluster.urls[0]}")
            assert "messages  6 (last seq 6, first seq 1)" in text
            assert any("not counted on the JetStream backend" in line for line in text)
            assert [line.split() for line in text if line.startswith("website ")] == [
                ["website", "missing_event", "1"]
            ]
            assert [line.split() for line in text if line.startswith("delivery_hook")] == [
                ["delivery_hook", "6", "0", "-"]
            ]
            (stats,) = await cli_lines("outbox", "stats", "--json")
            found = msgspec.json.decode(stats)
            assert (found["messages"], found["first_seq"], found["last_seq"]) == (6, 1, 6)
            assert found["stream_bytes"] > 0
            assert found["replicas"] == 3
            assert found["first_received_at"] <= found["last_received_at"]
            assert found["rejects"] == [
                {"source": "website", "reason_code": "missing_event", "rejects": 1}
            ]
            assert found["consumers"] == [
                {"name": "delivery_hook", "kind": "delivery", "seq": 6, "messages_behind": 0}
            ]
            assert set(found["not_kept"]) == {"by_type", "file_bytes", "seconds_behind"}

            # Rejects: the newest, filtered, and counted.
            (line,) = await cli_lines("rejects")
            assert line.split()[1:4] == ["website", "missing_event", "m-4"]
            (line,) = await cli_lines("rejects", "--json", "--reason", "missing_event")
            reject = msgspec.json.decode(line)
            assert (reject["message_id"], reject["source"]) == ("m-4", "website")
            assert msgspec.json.decode(reject["payload"])["messageId"] == "m-4"
            assert await cli_lines("rejects", "--reason", "invalid_json") == []
            assert "(no rejected messages)" in errors[-1]
            (line,) = await cli_lines("rejects", "--counts", "--json")
            assert msgspec.json.decode(line) == found["rejects"][0]
            assert await cli_lines("rejects", "-n", "0", code=2) == []
            assert "-n must be at least 1" in errors[-1]

            # Every read was an ephemeral consumer, deleted when done.
            assert await _consumers(js_cluster.urls) == ["delivery_hook"]


async def _post(http: aiohttp.ClientSession, url: str, batch: list[dict[str, Any]]) -> None:
    async with http.post(f"{url}/v1/batch", json={"batch": batch}, headers=AUTH) as r:
        assert r.status == 200, await r.text()


async def _follow(http: aiohttp.ClientSession, url: str, path: Path) -> None:
    """`tail -f` as a user runs it: the newest message, then each new one, until Ctrl-C."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cdpd", "outbox", "tail", "-f", "-n", "1", "--type", "track",
        "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = msgspec.json.decode(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["message_id"] == "m-5"
        await _post(
            http,
            url,
            [
                {"type": "page", "userId": "u2", "name": "Skipped", "messageId": "m-6"},
                {"type": "track", "userId": "u2", "event": "Later", "messageId": "m-7"},
            ],
        )
        later = msgspec.json.decode(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert later["message_id"] == "m-7"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert err == b""


async def _consumers(urls: list[str]) -> list[str]:
    client = await nats.connect(urls)
    try:
        return sorted([c.name for c in await client.jetstream().consumers_info(Layout().stream)])
    finally:
        await client.close()


async def _settled(urls: list[str], consumer: str) -> None:
    """Until the consumer has acknowledged every message of the stream."""
    client = await nats.connect(urls)
    try:
        js = client.jetstream()
        for _ in range(600):
            info = await js.consumer_info(Layout().stream, consumer)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{consumer} did not settle: {info}")
    finally:
        await client.close()
