"""`Running.reload(new_config)`: the whole configuration of a running cdpd changes without a
restart, and no delivery is lost, sent twice or cut off; a config that cannot be put in force is
refused and the old one stays."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from cdpd import config as cdpd_config
from cdpd.app import running
from tests.helpers import basic_auth, config_text
from tests.integration.test_delivery import MakeConfig, delivered, hook, send, track
from tests.sink import Sink, hold

NEW_SOURCE = '[[sources]]\nname = "app"\nwrite_key = "wk_app"\n'


def _config(tmp_path: Path, data_dir: Path, extra: str) -> cdpd_config.Config:
    path = tmp_path / "reloaded.toml"
    path.write_text(config_text(data_dir, extra))
    return cdpd_config.load(path)


async def test_reload_adds_a_source_and_a_destination_and_loses_nothing(
    make_config: MakeConfig, http: aiohttp.ClientSession, tmp_path: Path, data_dir: Path
) -> None:
    async with (
        Sink() as first,
        Sink() as second,
        running(make_config(hook("first", first.url))) as server,
    ):
        await send(http, server, [track(n) for n in range(20)])
        headers = {"Authorization": basic_auth("wk_app")}
        async with http.post(f"{server.url}/v1/track", json=track(99), headers=headers) as r:
            assert r.status == 401  # not a source yet
        changed = await server.reload(
            _config(tmp_path, data_dir, NEW_SOURCE + hook("first", first.url)
                    + hook("second", second.url))
        )  # fmt: skip
        assert changed == ["sources", "destinations"]
        await send(http, server, [track(n) for n in range(20, 40)])
        await send(http, server, [track(n) for n in range(40, 45)], key="wk_app")
        await first.wait_for_delivered(45)
        await second.wait_for_delivered(25)
    first_ids = Counter(m["messageId"] for m in first.messages)
    assert set(first_ids) == {f"m{n}" for n in range(45)}
    assert max(first_ids.values()) == 1  # nothing sent twice across the reload
    # A destination added by a reload starts at the outbox's end, like one added at a restart.
    assert {m["messageId"] for m in second.messages} == {f"m{n}" for n in range(20, 45)}


async def test_an_attempt_in_flight_finishes_and_is_not_sent_again(
    make_config: MakeConfig, http: aiohttp.ClientSession, tmp_path: Path, data_dir: Path
) -> None:
    release = asyncio.Event()
    # SIGTERM would give attempts in flight 0.2 s; a reload lets them take their timeout.
    drain = "[delivery]\ndrain_timeout_s = 0.2\n"
    async with (
        Sink(default=hold(release)) as sink,
        running(make_config(drain + hook("hook", sink.url, concurrency=1))) as server,
    ):
        await send(http, server, [track(1)])
        await sink.wait_for(lambda s: s.arrived >= 1)
        new = _config(tmp_path, data_dir, drain + hook("hook", sink.url, concurrency=2))
        reload = asyncio.create_task(server.reload(new))
        await asyncio.sleep(0.6)
        assert not reload.done()  # waits for the attempt in flight, past the drain timeout
        release.set()
        assert await reload == ["destinations"]
        await send(http, server, [track(2)])
        await delivered(server.delivery.lanes["hook"], 1)
    assert sorted(m["messageId"] for m in sink.messages) == ["m1", "m2"]


async def test_an_invalid_config_is_refused_and_the_old_one_kept(
    make_config: MakeConfig, http: aiohttp.ClientSession, tmp_path: Path, data_dir: Path
) -> None:
    async with Sink() as sink, running(make_config(hook("hook", sink.url))) as server:
        broken = _config(
            tmp_path,
            data_dir,
            NEW_SOURCE + '[[destinations]]\nname = "mp"\ntype = "mixpanel"\n'
            'project_token_env = "CDPD_TEST_UNSET_TOKEN"\n',
        )
        with pytest.raises(cdpd_config.ConfigError, match="CDPD_TEST_UNSET_TOKEN"):
            await server.reload(broken)
        headers = {"Authorization": basic_auth("wk_app")}
        async with http.post(f"{server.url}/v1/track", json=track(5), headers=headers) as r:
            assert r.status == 401  # the source of the refused config is not in force
        await send(http, server, [track(1)])
        await delivered(server.delivery.lanes["hook"], 1)
        assert list(server.delivery.lanes) == ["hook"]
    assert [m["messageId"] for m in sink.messages] == ["m1"]


async def test_a_reload_replaces_the_warehouses(
    make_config: MakeConfig, http: aiohttp.ClientSession, tmp_path: Path, data_dir: Path
) -> None:
    warehouse = (
        f'[[warehouses]]\nname = "wh2"\ntype = "sqlite"\npath = "{tmp_path / "wh2.sqlite3"}"\n'
        "interval_s = 3600\n"
    )
    async with running(make_config()) as server:
        assert server.warehouses.warehouses == []
        assert await server.reload(_config(tmp_path, data_dir, warehouse)) == ["warehouses"]
        await send(http, server, [track(1)])
        report = await server.warehouses.sync_now("wh2")  # (its schedule may have synced too)
        assert report.status == "success"
        assert report.position == 1


async def test_a_removed_destination_leaves_the_stats(
    make_config: MakeConfig, http: aiohttp.ClientSession, tmp_path: Path, data_dir: Path
) -> None:
    admin = '[admin]\ntoken = "reload-admin-token"\n'
    bearer = {"Authorization": "Bearer reload-admin-token"}
    async with (
        Sink() as first,
        Sink() as second,
        running(
            make_config(admin + hook("first", first.url) + hook("second", second.url))
        ) as server,
    ):
        assert sorted(server.delivery.lanes) == ["first", "second"]
        await server.reload(_config(tmp_path, data_dir, admin + hook("first", first.url)))
        assert list(server.delivery.lanes) == ["first"]
        async with http.get(f"{server.url}/admin/deliveries", headers=bearer) as response:
            names = [d["destination"] for d in (await response.json())["destinations"]]
        assert names == ["first"]
        async with http.get(f"{server.url}/metrics") as response:
            assert 'destination="second"' not in await response.text()
