"""The delivery ledger end to end: the circuit breaker on a failing destination, replay jobs
beside live traffic, positions that survive restarts, and `cdpd deliveries show`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from cdpd.app import running
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
from tests.integration.test_delivery_operations import ADMIN, BEARER, run_cli
from tests.sink import Sink, status

WAITING = 2000


async def test_a_dead_destination_gets_probes_not_an_attempt_per_message(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    async with Sink(default=status(503)) as sink:
        config = make_config(hook("hook", sink.url, batch_size=10, concurrency=4))
        async with running(config, clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(n, user=f"u{n}") for n in range(WAITING)])
            await sink.wait_for(lambda s: s.arrived >= 5)
            await asyncio.sleep(0.2)  # time for anything more to go out
            assert lane.circuit.state == "open"
            opened_with = sink.arrived
            assert opened_with <= 4 + 4  # the threshold, plus what was in flight then
            # A minute of a dead destination: one probe at 1, 2, 4, 8, 16, 30, 30... seconds.
            for _ in range(60):
                clock.advance(1)
                await asyncio.sleep(0.01)
            probes = sink.arrived - opened_with
            assert 3 <= probes <= 8
            # Messages behind the open circuit were never charged an attempt.
            charged = query(data_dir, "SELECT count(*) FROM deliveries")[0][0]
            assert charged <= 10 * (opened_with + probes)
            # It comes back: within one probe interval everything waiting goes out.
            sink.default = status(200)
            clock.advance(30)
            await delivered(lane, WAITING, timeout_s=30)
            assert lane.circuit.state == "closed"
    assert len(set(sink.message_ids)) == WAITING
    assert {state for _, state, _, _ in deliveries(data_dir)} == {"delivered"}


async def test_an_open_circuit_still_gives_up_after_the_retry_window(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    retry = "[delivery.retry]\nretry_window_s = 60\nmin_attempts = 1\n"
    async with Sink(default=status(503)) as sink:
        config = make_config(retry + hook("hook", sink.url, batch_size=10, concurrency=2))
        async with running(config, clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(n, user=f"u{n}") for n in range(100)])
            await sink.wait_for(lambda s: s.arrived >= 5)
            for _ in range(40):  # two minutes: past the window, for every message
                clock.advance(3)
                await asyncio.sleep(0.02)
            dead = "SELECT count(*) FROM deliveries WHERE state = 'dead'"
            async with asyncio.timeout(30):
                while query(data_dir, dead) != [(100,)]:
                    clock.advance(3)
                    await asyncio.sleep(0.02)
            assert lane.circuit.state != "closed"
            assert sink.arrived < 30  # probes, not an attempt per message
    states = {state for _, state, _, _ in deliveries(data_dir)}
    assert states == {"dead"}
    assert (
        "unreachable for the whole retry window"
        in (query(data_dir, "SELECT last_error FROM deliveries ORDER BY seq DESC LIMIT 1")[0][0])
    )


async def test_retry_after_pauses_the_whole_lane(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    async with Sink(default=status(503, {"Retry-After": "5"})) as sink:
        config = make_config(hook("hook", sink.url, concurrency=1))
        async with running(config, clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(n, user=f"u{n}") for n in range(50)])
            await recorded(lane, 1)
            await asyncio.sleep(0.2)
            assert sink.arrived == 1  # paused for 5 s, not one request per message
            sink.default = status(200)
            clock.advance(5)
            await delivered(lane, 49)


async def test_a_replay_job_runs_beside_live_traffic_and_ends(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink() as sink:
        config = make_config(ADMIN + hook("hook", sink.url, batch_size=5))
        async with running(config) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(n) for n in range(20)])
            await delivered(lane, 20)
            replay = {"destination": "hook", "since": "2000-01-01T00:00:00Z"}
            async with http.post(f"{server.url}/admin/replay", json=replay, headers=BEARER) as resp:
                assert (await resp.json()) == {"destination": "hook", "queued": 20}
            await send(http, server, [track(n) for n in range(20, 30)])  # live, meanwhile
            await delivered(lane, 50)
            await asyncio.sleep(0.1)
        assert query(data_dir, "SELECT finished_at IS NOT NULL FROM replays") == [(1,)]
        delivery_consumers = "SELECT name FROM consumers WHERE kind IN ('delivery', 'replay')"
        assert query(data_dir, delivery_consumers) == [("delivery:hook",)]
    ids = sink.message_ids
    assert sorted(set(ids)) == sorted(f"m{n}" for n in range(30))
    assert sorted(m for m in ids if ids.count(m) == 2) == sorted(
        f"m{n}" for n in range(20) for _ in range(2)
    )


async def test_positions_survive_a_restart_and_nothing_is_sent_twice(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink() as sink:
        config = make_config(hook("hook", sink.url) + hook("other", sink.url, enabled=False))
        async with running(config) as server:
            await send(http, server, [track(n) for n in range(10)])
            await delivered(server.delivery.lanes["hook"], 10)
        positions = dict(query(data_dir, "SELECT name, seq FROM consumers"))
        assert positions["delivery:hook"] == 10
        async with running(config) as server:
            await send(http, server, [track(n) for n in range(10, 15)])
            await delivered(server.delivery.lanes["hook"], 5)
            await asyncio.sleep(0.1)
    assert sorted(sink.message_ids) == sorted(f"m{n}" for n in range(15))
    assert query(data_dir, "SELECT seq, paused FROM consumers WHERE name = 'delivery:hook'") == [
        (15, 0)
    ]


async def test_deliveries_show_says_where_a_message_stands(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    async with Sink() as good, Sink(default=status(500)) as bad:
        config = make_config(
            ADMIN + hook("good", good.url) + hook("bad", bad.url, types=["identify"])
        )
        async with running(config, clock=clock) as server:
            await send(
                http, server, [track(1), {"type": "identify", "userId": "u", "messageId": "i"}]
            )
            await delivered(server.delivery.lanes["good"], 2)
            await recorded(server.delivery.lanes["bad"], 1)
            url = f"{server.url}/admin/deliveries/messages/i"
            async with http.get(url, headers=BEARER) as resp:
                shown = {d["destination"]: d for d in (await resp.json())["deliveries"]}
            assert shown["good"]["state"] == "delivered"
            assert shown["bad"]["state"] == "retrying"
            assert shown["bad"]["attempts"] == 1
            assert shown["bad"]["last_status"] == 500
            assert [a["status"] for a in shown["bad"]["history"]] == [500]
    config_path = str(tmp_path / "cdpd.toml")
    assert await run_cli("deliveries", "show", "m1", "--config", config_path) == 0
    out = capsys.readouterr().out
    assert "good" in out
    assert "delivered" in out
    assert "not_owed" in out
    assert (
        await run_cli("deliveries", "retry", "--destination", "bad", "--config", config_path) == 0
    )
    assert "1 waiting delivery of bad is due now" in capsys.readouterr().out
    assert await run_cli("outbox", "stats", "--config", config_path) == 0
    assert "delivery:good" in capsys.readouterr().out


async def test_a_replayed_dead_message_that_gets_through_is_delivered_in_the_ledger(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink(default=status(400)) as sink:
        config = make_config(ADMIN + hook("hook", sink.url))
        async with running(config) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(1), track(2)])
            await recorded(lane, 2)
            assert [s[1] for s in deliveries(data_dir)] == ["dead", "dead"]
            sink.default = status(200)
            replay = {"destination": "hook", "since": "2000-01-01T00:00:00Z"}
            async with http.post(f"{server.url}/admin/replay", json=replay, headers=BEARER) as resp:
                assert (await resp.json())["queued"] == 2
            await delivered(lane, 2)
            await asyncio.sleep(0.1)
    assert [s[:3] for s in deliveries(data_dir)] == [
        ("m1", "delivered", 2),
        ("m2", "delivered", 2),
    ]


async def test_a_destination_scoped_transformation_changes_only_that_destinations_copy(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    transformation = (
        '[[transformations]]\nname = "legacy"\nsource = "website"\ndestination = "renamed"\n'
        'if = \'event = "Order Completed"\'\nnewEventName = "order_completed"\n'
        'propertyRenames = [{ oldName = "total", newName = "amount" }]\n'
    )
    async with Sink() as renamed, Sink() as plain:
        config = make_config(
            hook("renamed", renamed.url) + hook("plain", plain.url) + transformation
        )
        async with running(config) as server:
            await send(http, server, [track(1, properties={"total": 5}), track(2, event="Other")])
            await delivered(server.delivery.lanes["renamed"], 2)
            await delivered(server.delivery.lanes["plain"], 2)
    by_id = {m["messageId"]: m for m in renamed.messages}
    assert (by_id["m1"]["event"], by_id["m1"]["properties"]) == ("order_completed", {"amount": 5})
    assert by_id["m2"]["event"] == "Other"  # its condition does not match
    assert {m["event"] for m in plain.messages} == {"Order Completed", "Other"}
    stored = query(data_dir, "SELECT event FROM messages ORDER BY seq")
    assert stored == [("Order Completed",), ("Other",)]  # what is stored is unchanged
