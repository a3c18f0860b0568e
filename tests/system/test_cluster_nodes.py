"""Two `cdpd serve` nodes on a three-server JetStream cluster: the official Python client sends
through both while the node holding the warehouse lease is `kill -9`ed and one JetStream
server is stopped. Every acknowledged message is in the stream and loaded into the PostgreSQL
warehouse exactly once, by the node that took the lease over."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from pathlib import Path

import nats
import pytest
from nats.js.errors import KeyNotFoundError
from segment.analytics import Client

from cdpd.cluster.layout import Layout
from cdpd.cluster.warehouse import lease_key
from tests.cluster_support import empty_postgres_warehouse, jetstream_text, loaded_ids, stored_rows
from tests.helpers import WRITE_KEY, Daemon, spawn_cdpd
from tests.jetstream_cluster import JetStreamCluster

pytestmark = pytest.mark.system

ACKED_BEFORE_KILL = 300
ACKED_AFTER_KILL = 600


class Sender:
    """One client sending track calls one by one (sync mode: each call is one request and
    returns only after its 200). A failed call moves it to the other node, as a load balancer
    would."""

    def __init__(self, name: str, urls: list[str]) -> None:
        self.name = name
        self.urls = urls
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = Client(WRITE_KEY, host=self.urls[0], sync_mode=True, timeout=5, max_retries=0)
        n = 0
        while not self.stop.is_set():
            message_id = f"{self.name}-{n}"
            n += 1
            try:
                client.track(
                    user_id=f"u{n % 50}", event="Order", message_id=message_id, properties={"n": n}
                )
            except Exception:
                self.failed.append(message_id)
                self.urls.reverse()
                client.host = self.urls[0]
                continue
            self.acked.append(message_id)


async def _lease_holder(urls: list[str]) -> str:
    client = await nats.connect(urls)
    try:
        kv = await client.jetstream().key_value(Layout().leases_bucket)
        for _ in range(300):
            with contextlib.suppress(KeyNotFoundError):  # not taken yet
                entry = await kv.get(lease_key("wh"))
                if entry.value:
                    return entry.value.decode()
            await asyncio.sleep(0.1)
        raise AssertionError("no node took the warehouse lease")
    finally:
        await client.close()


async def _until(count: int, senders: list[Sender]) -> None:
    for _ in range(1200):
        if sum(len(s.acked) for s in senders) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} messages were acknowledged")


async def test_two_nodes_lose_nothing_acknowledged_when_one_dies_and_a_server_stops(
    tmp_path: Path, js_cluster: JetStreamCluster, postgres_test_dsn: str
) -> None:
    warehouse = await empty_postgres_warehouse(postgres_test_dsn)
    nodes: list[Daemon] = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            jetstream_text(
                tmp_path / name, js_cluster.urls, warehouse.toml, jetstream="ack_timeout_s = 2.0\n"
            )
        )
        nodes.append(await spawn_cdpd(path))
    senders = [Sender("a", [nodes[0].url, nodes[1].url]), Sender("b", [nodes[1].url, nodes[0].url])]
    threads = [asyncio.create_task(asyncio.to_thread(s.run)) for s in senders]
    try:
        holder = await _lease_holder(js_cluster.urls)
        await _until(ACKED_BEFORE_KILL, senders)
        leader = next(n for n in nodes if holder.endswith(f":{n.proc.pid}"))
        leader.proc.send_signal(signal.SIGKILL)
        await leader.proc.wait()
        js_cluster.stop(2)
        await _until(ACKED_BEFORE_KILL + ACKED_AFTER_KILL, senders)
    finally:
        for sender in senders:
            sender.stop.set()
        await asyncio.gather(*threads)
    acked = {m for s in senders for m in s.acked}
    survivor = next(n for n in nodes if n is not leader)
    stored = {row.message_id for row in await stored_rows(js_cluster.urls[:2])}
    assert acked <= stored, sorted(acked - stored)[:10]
    loaded = await loaded_ids(warehouse, acked)
    assert acked <= set(loaded), sorted(acked - set(loaded))[:10]
    assert len(loaded) == len(set(loaded))  # each message loaded once
    assert await survivor.stop() == 0
