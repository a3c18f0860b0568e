"""Operating delivery: dead letters and replay, the stats a person reads, retention, shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd.app import running
from cdpd.model.timestamps import now_ms
from tests.helpers import FakeClock, query
from tests.integration.test_delivery import (
    MakeConfig,
    delivered,
    deliveries,
    hook,
    recorded,
    send,
    track,
)
from tests.sink import Sink, hold, status

ADMIN = '[admin]\ntoken = "adm1n"\n'
BEARER = {"Authorization": "Bearer adm1n"}


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(cli.main, list(args))


async def test_dead_deliveries_are_listed_and_replayed(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    config_path = str(tmp_path / "cdpd.toml")
    async with (
        Sink(default=status(400, body="bad field")) as sink,
        running(make_config(hook("hook", sink.url)), clock=clock) as server,
    ):
        lane = server.delivery.lanes["hook"]
        await send(http, server, [track(1), track(2)])
        await recorded(lane, 2)
        assert await run_cli("deliveries", "dead", "--json", "--config", config_path) == 0
        dead = [msgspec.json.decode(line) for line in _json_lines(capsys)]
        assert {d["message_id"] for d in dead} == {"m1", "m2"}
        assert dead[0]["last_error"] == "HTTP 400: bad field (status 400 is not retried)"

        sink.default = status(200)  # the destination is fixed
        code = await run_cli("replay", "--destination", "hook", "--dead", "--config", config_path)
        assert code == 0
        assert "2 dead deliveries queued for hook" in capsys.readouterr().out
        clock.advance(1)  # the lane looks again at its poll interval
        await delivered(lane, 2)
    assert [(m, s, a) for m, s, a, _ in deliveries(data_dir)] == [
        ("m1", "delivered", 2),
        ("m2", "delivered", 2),
    ]


async def test_a_new_destination_is_back_filled_by_replay(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with Sink() as old, Sink() as new:
        async with running(make_config(hook("old", old.url))) as server:
            await send(http, server, [track(n) for n in range(5)])
            await delivered(server.delivery.lanes["old"], 5)
        config = make_config(hook("old", old.url) + hook("new", new.url))
        async with running(config) as server:
            await send(http, server, [track(9)])
            await delivered(server.delivery.lanes["new"], 1)
            await delivered(server.delivery.lanes["old"], 1)  # before shutdown can cut it short
            assert new.message_ids == ["m9"]  # a new destination starts from now
            code = await run_cli(
                "replay", "--destination", "new", "--since", "2000-01-01",
                "--config", str(tmp_path / "cdpd.toml"),
            )  # fmt: skip
            assert code == 0
            # Replay owes the range again, including what the destination already has.
            assert "6 messages queued for new" in capsys.readouterr().out
            server.delivery.lanes["new"].wake()
            await delivered(server.delivery.lanes["new"], 7)
    assert sorted(new.message_ids) == ["m0", "m1", "m2", "m3", "m4", "m9", "m9"]
    assert len(old.message_ids) == 6


async def test_admin_endpoints_need_the_token(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with (
        Sink(default=status(503)) as sink,
        running(make_config(ADMIN + hook("hook", sink.url))) as server,
    ):
        await send(http, server, [track(1)])
        await recorded(server.delivery.lanes["hook"], 1)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.get(f"{server.url}/admin/deliveries", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["code"] == "invalid_admin_token"
        async with http.get(f"{server.url}/admin/deliveries", headers=BEARER) as resp:
            assert resp.status == 200
            (report,) = (await resp.json())["destinations"]
    assert report["destination"] == "hook"
    assert (report["retrying"], report["delivered"], report["dead"]) == (1, 0, 0)
    assert report["errors_by_status"] == {"503": 1}
    assert report["last_error"]["message_id"] == "m1"
    assert report["latency_p50_ms"] is not None


async def test_admin_is_off_without_a_token(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with (
        running(make_config()) as server,
        http.get(f"{server.url}/admin/deliveries", headers=BEARER) as resp,
    ):
        assert resp.status == 401
        assert (await resp.json())["code"] == "admin_disabled"


async def test_admin_replay(make_config: MakeConfig, http: aiohttp.ClientSession) -> None:
    async with (
        Sink(default=status(410)) as sink,
        running(make_config(ADMIN + hook("hook", sink.url))) as server,
    ):
        lane = server.delivery.lanes["hook"]
        await send(http, server, [track(1)])
        await recorded(lane, 1)
        sink.default = status(200)
        url = f"{server.url}/admin/replay"
        async with http.post(
            url, json={"destination": "hook", "dead": True}, headers=BEARER
        ) as resp:
            assert (await resp.json()) == {"destination": "hook", "queued": 1}
        await delivered(lane, 1)
        since_only = {"destination": "hook", "since": "2000-01-01T00:00:00Z"}  # until: now
        async with http.post(url, json=since_only, headers=BEARER) as resp:
            assert (await resp.json()) == {"destination": "hook", "queued": 1}
        await delivered(lane, 2)
        async with http.post(
            url, json={"destination": "nope", "dead": True}, headers=BEARER
        ) as resp:
            assert resp.status == 404


async def test_metrics(make_config: MakeConfig, http: aiohttp.ClientSession) -> None:
    async with Sink() as sink, running(make_config(hook("hook", sink.url))) as server:
        await send(http, server, [track(1), {"type": "track", "userId": "u"}])
        await delivered(server.delivery.lanes["hook"], 1)
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            text = await resp.text()
    assert 'cdpd_ingest_messages_total{outcome="accepted"} 1.0' in text
    assert 'cdpd_ingest_rejected_total{reason="missing_event"} 1.0' in text
    assert 'cdpd_delivery_outcomes_total{destination="hook",outcome="delivered"} 1.0' in text
    assert 'cdpd_deliveries{destination="hook",state="pending"} 0.0' in text
    assert 'state="delivered"' not in text  # the outcomes counter has those
    assert 'cdpd_delivery_request_seconds_count{destination="hook"} 1.0' in text


async def test_cli_stats(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with (
        Sink(default=status(401)) as sink,
        running(make_config(hook("hook", sink.url))) as server,
    ):
        await send(http, server, [track(1)])
        await recorded(server.delivery.lanes["hook"], 1)
    assert await run_cli("deliveries", "stats", "--config", str(tmp_path / "cdpd.toml")) == 0
    text = capsys.readouterr().out
    assert "UNHEALTHY (401/403)" in text
    assert "401: 1" in text
    assert "last error" in text
    assert "on m1" in text


async def test_retention_prunes_delivered_rows_and_old_messages(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    retention = "[delivery]\ndelivered_retention_s = 60\narchive_retention_s = 3600\n"
    async with Sink() as sink:
        config = make_config(retention + hook("hook", sink.url))
        async with running(config, clock=clock) as server:
            await send(http, server, [track(1), track(2)])
            await delivered(server.delivery.lanes["hook"], 2)
            pruner = server.delivery.pruner
            nothing = {"delivered": 0, "dead": 0, "messages": 0, "rejects": 0}
            nothing["delivered_actions"] = 0
            assert await pruner.prune_once() == nothing
            clock.advance(61)
            # Delivered on their first attempts: no ledger rows to prune.
            assert (await pruner.prune_once())["delivered"] == 0
            assert query(data_dir, "SELECT count(*) FROM attempts") == [(0,)]
            assert query(data_dir, "SELECT count(*) FROM messages") == [(2,)]
        # The messages were received (by the real clock) now: they go once both the archive
        # retention and the deduplication window (24 h by default) have passed. (The pruner
        # also makes a pass of its own as it starts.)
        async with running(config, clock=FakeClock(start_ms=_hours_from_now(23))) as server:
            await server.delivery.pruner.prune_once()
            assert query(data_dir, "SELECT count(*) FROM messages") == [(2,)]
        async with running(config, clock=FakeClock(start_ms=_hours_from_now(25))) as server:
            await server.delivery.pruner.prune_once()
            assert query(data_dir, "SELECT count(*) FROM messages") == [(0,)]


async def test_undelivered_messages_are_never_pruned(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink(default=status(500)) as sink:
        config = make_config("[delivery]\narchive_retention_s = 60\n" + hook("hook", sink.url))
        async with running(config) as server:
            await send(http, server, [track(1)])
            await recorded(server.delivery.lanes["hook"], 1)
        async with running(config, clock=FakeClock(start_ms=_hours_from_now(48))) as server:
            await server.delivery.pruner.prune_once()
    assert query(data_dir, "SELECT count(*) FROM messages") == [(1,)]


async def test_shutdown_puts_unfinished_attempts_back_without_counting_them(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    release = asyncio.Event()
    async with Sink(default=hold(release)) as sink:
        config = make_config("[delivery]\ndrain_timeout_s = 0.2\n" + hook("hook", sink.url))
        async with running(config) as server:
            await send(http, server, [track(1)])
            await sink.wait_for_requests(1)
        # Never finished: its lane's position has not passed it, so it goes again.
        assert deliveries(data_dir) == [("m1", "not_reached", 0, None)]
        assert query(data_dir, "SELECT count(*) FROM attempts") == [(0,)]
        release.set()
        sink.default = status(200)
        async with running(config) as server:
            await delivered(server.delivery.lanes["hook"], 1)
    assert deliveries(data_dir) == [("m1", "delivered", 1, None)]


async def test_shutdown_lets_attempts_in_flight_finish(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    release = asyncio.Event()
    async with Sink(default=hold(release)) as sink:
        config = make_config("[delivery]\ndrain_timeout_s = 30\n" + hook("hook", sink.url))
        async with running(config) as server:
            await send(http, server, [track(1)])
            await sink.wait_for_requests(1)
            server.delivery.stop()
            release.set()
    assert deliveries(data_dir) == [("m1", "delivered", 1, None)]


def _json_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def _hours_from_now(hours: int) -> int:
    return now_ms() + hours * 3600_000


async def test_a_removed_destination_gives_up_its_deliveries_and_its_hold_on_messages(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with (
        Sink(default=status(503)) as sink,
        running(make_config(hook("gone", sink.url))) as server,
    ):
        await send(http, server, [track(1)])
        await recorded(server.delivery.lanes["gone"], 1)
    async with running(make_config()):
        assert query(data_dir, "SELECT state, last_error FROM deliveries") == [
            ("dead", "the destination is no longer configured")
        ]
        assert query(data_dir, "SELECT count(*) FROM consumers WHERE kind = 'delivery'") == [(0,)]
