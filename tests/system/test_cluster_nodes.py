"""Two `cdpd serve` nodes on a three-server JetStream cluster: the official Python client sends
through both while the node holding the warehouse lease is `kill -9`ed and one JetStream
server is stopped. Every acknowledged message is in the stream and loaded into the PostgreSQL
warehouse exactly once, by the node that took the lease over."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from segment.analytics import Client

from cdpd.cluster.warehouse import lease_key
from tests.cluster_support import (
    Sender,
    acked_at_least,
    empty_postgres_warehouse,
    jetstream_text,
    lease_holder,
    loaded_ids,
    stored_rows,
)
from tests.helpers import Daemon, spawn_cdpd
from tests.jetstream_cluster import JetStreamCluster

pytestmark = pytest.mark.system

ACKED_BEFORE_KILL = 300
ACKED_AFTER_KILL = 600


def _track_order(client: Client, message_id: str, n: int) -> None:
    client.track(user_id=f"u{n % 50}", event="Order", message_id=message_id, properties={"n": n})


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
    senders = [
        Sender("a", [nodes[0].url, nodes[1].url], _track_order),
        Sender("b", [nodes[1].url, nodes[0].url], _track_order),
    ]
    threads = [asyncio.create_task(asyncio.to_thread(s.run)) for s in senders]
    try:
        holder = await lease_holder(js_cluster.urls, lease_key("wh"))
        await acked_at_least(ACKED_BEFORE_KILL, senders)
        leader = next(n for n in nodes if holder.endswith(f":{n.proc.pid}"))
        leader.proc.send_signal(signal.SIGKILL)
        await leader.proc.wait()
        js_cluster.stop(2)
        await acked_at_least(ACKED_BEFORE_KILL + ACKED_AFTER_KILL, senders)
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
