"""Delivery with two `cdpd serve` nodes on a three-server JetStream cluster: the official Python
client sends through both while one node is `kill -9`ed; every acknowledged message reaches
the webhook sink, and only what the dead node had in flight arrives twice. A destination's
rate limit holds for both nodes together."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from segment.analytics import Client

from tests.cluster_support import Sender, assert_one_limit, jetstream_text
from tests.helpers import Daemon, spawn_cdpd
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink, status

pytestmark = pytest.mark.system

BATCH_SIZE, CONCURRENCY = 10, 2


def _track(client: Client, message_id: str, n: int) -> None:
    client.track(user_id=f"u{n % 50}", event="Order", message_id=message_id)


def _hook(url: str, **options: object) -> str:
    lines = [f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{url}"\ntimeout_s = 1']
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


async def _nodes(tmp_path: Path, cluster: JetStreamCluster, extra: str) -> list[Daemon]:
    nodes = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            jetstream_text(tmp_path / name, cluster.urls, extra, jetstream="ack_wait_s = 2\n")
        )
        nodes.append(await spawn_cdpd(path))
    return nodes


async def _until(predicate: object, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_every_acknowledged_message_is_delivered_when_a_node_dies(
    tmp_path: Path, js_cluster: JetStreamCluster
) -> None:
    async with Sink() as sink:
        hook = _hook(sink.url, batch_size=BATCH_SIZE, concurrency=CONCURRENCY)
        nodes = await _nodes(tmp_path, js_cluster, hook)
        senders = [
            Sender("a", [nodes[0].url, nodes[1].url], _track),
            Sender("b", [nodes[1].url, nodes[0].url], _track),
        ]
        threads = [asyncio.create_task(asyncio.to_thread(s.run)) for s in senders]
        try:
            await _until(lambda: len(sink.messages) >= 200)
            nodes[0].proc.send_signal(signal.SIGKILL)
            await nodes[0].proc.wait()
            await _until(lambda: sum(len(s.acked) for s in senders) >= 600)
        finally:
            for sender in senders:
                sender.stop.set()
            await asyncio.gather(*threads)
        acked = {m for s in senders for m in s.acked}
        await _until(lambda: acked <= set(sink.message_ids))
        counts = Counter(sink.message_ids)
        twice = [m for m, n in counts.items() if n > 1]
        # Only the requests the killed node had in flight can have been sent again.
        assert len(twice) <= BATCH_SIZE * CONCURRENCY, twice
        assert max(counts.values()) <= 2
        assert await nodes[1].stop() == 0


async def test_a_rate_limit_holds_across_two_serving_nodes(
    tmp_path: Path, js_cluster: JetStreamCluster
) -> None:
    arrivals: list[float] = []

    async def counted(request: web.Request, body: bytes) -> web.StreamResponse:
        arrivals.append(time.time())
        return await status(200)(request, body)

    async with Sink(default=counted) as sink:
        nodes = await _nodes(tmp_path, js_cluster, _hook(sink.url, rate_limit_per_s=5))
        try:
            senders = [Sender("a", [nodes[0].url], _track), Sender("b", [nodes[1].url], _track)]
            threads = [asyncio.create_task(asyncio.to_thread(s.run)) for s in senders]
            await _until(lambda: sum(len(s.acked) for s in senders) >= 30)
            for sender in senders:
                sender.stop.set()
            await asyncio.gather(*threads)
            acked = {m for s in senders for m in s.acked}
            await _until(lambda: acked <= set(sink.message_ids))
        finally:
            codes = [await node.stop() for node in nodes]
        assert codes == [0, 0]
        assert_one_limit(arrivals, per_s=5)
