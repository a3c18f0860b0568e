"""`[admin] listen` serves /admin and /metrics on their own address (not on the public ingest
port), and /metrics counts HTTP answers by status, the outbox's size and the disk's free space,
and each warehouse's lag and last successful sync."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from cdpd.app import running
from tests.helpers import WRITE_KEY, basic_auth
from tests.integration.test_delivery import MakeConfig, send, track

ADMIN = '[admin]\ntoken = "admin-secret-token"\nlisten = "127.0.0.1:0"\n'
BEARER = {"Authorization": "Bearer admin-secret-token"}


async def test_admin_and_metrics_listen_apart(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with running(make_config(ADMIN)) as server:
        assert server.admin_url is not None
        assert server.admin_url != server.url
        for path in ("/metrics", "/admin/deliveries"):
            async with http.get(f"{server.url}{path}", headers=BEARER) as response:
                assert response.status == 404  # not on the public port
        async with http.get(f"{server.admin_url}/admin/deliveries", headers=BEARER) as response:
            assert response.status == 200
        async with http.get(f"{server.admin_url}/metrics") as response:
            assert response.status == 200
        async with http.post(f"{server.admin_url}/v1/track", json=track(1)) as response:
            assert response.status == 404  # ingest is not on the admin port
        async with http.get(f"{server.admin_url}/health") as response:
            assert response.status == 200


async def test_metrics_about_http_storage_and_warehouses(
    make_config: MakeConfig, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    warehouse = (
        f'[[warehouses]]\nname = "wh"\ntype = "sqlite"\npath = "{tmp_path / "wh.sqlite3"}"\n'
        "interval_s = 3600\n"
    )
    async with running(make_config(warehouse)) as server:
        await send(http, server, [track(1), track(2)])
        async with http.post(f"{server.url}/v1/track", json=track(3)) as response:
            assert response.status == 401
        async with http.get(f"{server.url}/metrics") as response:
            before = await response.text()
        await server.warehouses.sync_now("wh")
        await send(http, server, [track(4)], key=WRITE_KEY)
        async with http.get(f"{server.url}/metrics") as response:
            after = await response.text()
    assert 'cdpd_http_responses_total{status="200"} 1.0' in before
    assert 'cdpd_http_responses_total{status="401"} 1.0' in before
    assert "cdpd_outbox_bytes " in before
    assert "cdpd_disk_free_bytes " in before
    assert 'cdpd_warehouse_last_success_timestamp_seconds{warehouse="wh"}' in after
    assert 'cdpd_warehouse_lag_messages{warehouse="wh"} 1.0' in after  # track 4, not loaded
    assert basic_auth(WRITE_KEY) not in after
