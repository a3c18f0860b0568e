"""Leases and the warehouse on the JetStream backend: one loader at a time, and a new leader
continues where the last one stopped (real cluster, real PostgreSQL, real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import nats

from cdpd.cluster import connect
from cdpd.cluster.layout import Layout
from cdpd.cluster.lease import Lease
from cdpd.cluster.node import Node, running_node
from cdpd.cluster.warehouse import WarehouseLeader
from cdpd.config import JetStreamConfig
from tests.cluster_support import empty_postgres_warehouse, jetstream_config, jetstream_text
from tests.helpers import WRITE_KEY, WarehouseProbe, basic_auth
from tests.jetstream_cluster import JetStreamCluster

AUTH = {"Authorization": basic_auth(WRITE_KEY)}


async def test_one_node_holds_a_lease_until_it_stops_renewing_it(
    js_cluster: JetStreamCluster,
) -> None:
    config = JetStreamConfig(servers=js_cluster.urls)
    layout = Layout.of(config)
    client = await nats.connect(js_cluster.urls)
    try:
        js = client.jetstream()
        await connect.ensure(js, config, layout)
        kv = await js.key_value(layout.leases_bucket)
        first, second = Lease(kv, "warehouse.wh", "a"), Lease(kv, "warehouse.wh", "b")
        assert await first.acquire()
        assert not await second.acquire()
        assert await first.renew()
        taken = False
        for _ in range(200):  # the entry expires once `first` stops renewing it
            await asyncio.sleep(0.1)
            taken = await second.acquire()
            if taken:
                break
        assert taken
        assert not await first.renew()  # fenced: its revision is no longer the key's
        assert first.lost.is_set()
        assert not first.held
        await first.release()  # releases nothing it does not hold
        assert await second.renew()
        await second.release()
        assert await first.acquire()
    finally:
        await client.close()


def _leader(node: Node) -> WarehouseLeader:
    leaders = node.stages["warehouses"]
    assert isinstance(leaders, list)
    return leaders[0]


async def _send(http: aiohttp.ClientSession, node: Node, prefix: str, count: int) -> None:
    batch = [
        {"type": "track", "event": "Order", "userId": f"u{i}", "messageId": f"{prefix}-{i}"}
        for i in range(count)
    ]
    async with http.post(f"{node.url}/v1/batch", json={"batch": batch}, headers=AUTH) as r:
        assert r.status == 200, await r.text()


async def _loaded(warehouse: WarehouseProbe, count: int) -> tuple[int, int]:
    """(rows, distinct message ids) in the tracks table, once it holds `count` rows."""
    found = (0, 0)
    for _ in range(600):
        with contextlib.suppress(Exception):  # the table appears with the first load
            rows = await warehouse.fetch(
                'SELECT count(*), count(DISTINCT id) FROM "website"."tracks"'
            )
            found = (int(rows[0][0]), int(rows[0][1]))
        if found[0] >= count:
            break
        await asyncio.sleep(0.1)
    return found


async def test_the_lease_holder_loads_and_the_next_one_continues_exactly_where_it_stopped(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    postgres_test_dsn: str,
    http: aiohttp.ClientSession,
) -> None:
    warehouse = await empty_postgres_warehouse(postgres_test_dsn)

    def config(name: str):  # type: ignore[no-untyped-def]
        text = jetstream_text(tmp_path / name, js_cluster.urls, warehouse.toml)
        return jetstream_config(tmp_path / f"{name}.toml", text)

    async with running_node(config("b"), node_name="b") as b:
        async with running_node(config("a"), node_name="a") as a:
            await _send(http, a, "a", 40)
            await _send(http, b, "b", 40)
            assert await _loaded(warehouse, 80) == (80, 80)
            leaders = [node for node in (a, b) if _leader(node).lease.held]
            assert len(leaders) == 1  # never both at once
        await _send(http, b, "late", 30)  # node a is gone; b loads, from where a was
        assert await _loaded(warehouse, 110) == (110, 110)
        assert _leader(b).lease.held
        positions = await warehouse.fetch("SELECT seq FROM _cdpd.positions WHERE warehouse = 'wh'")
        assert positions == [(110,)]
