"""Regulations racing the rest of the daemon: ingest of the same user from many clients at
once, a warehouse sync, and a replay to a destination."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cdpd import config as cdpd_config
from cdpd.app import Running, running
from tests.helpers import WarehouseProbe, query
from tests.integration.test_delivery import delivered, hook, send
from tests.regulations import (
    ADMIN,
    AUTH,
    outbox_mentions,
    regulate,
    settled,
    warehouse_mentions,
)
from tests.sink import Sink, hold

MakeConfig = Callable[..., cdpd_config.Config]
GONE = "user-gone-51d0"
KEPT = "user-kept-0c77"


def tracks(user: str, tag: str, count: int) -> list[dict[str, Any]]:
    return [
        {"type": "track", "event": "Viewed", "userId": user, "messageId": f"{tag}-{n}-{user}"}
        for n in range(count)
    ]


async def _keep_sending(
    http: aiohttp.ClientSession, server: Running, tag: str, stop: asyncio.Event, rounds: list[int]
) -> None:
    """Batches of both users' messages until `stop`; `rounds[0]` counts the answered ones."""
    for round_ in itertools.count():
        if stop.is_set():
            return
        batch = tracks(GONE, f"{tag}-{round_}", 20) + tracks(KEPT, f"{tag}-{round_}", 5)
        await send(http, server, batch)
        rounds[0] += 1


async def _each_goes_on(counts: list[list[int]], more: int) -> None:
    """Until each counter has gone `more` past where it is now: the race is run however slow
    the machine is."""
    wanted = [count[0] + more for count in counts]
    async with asyncio.timeout(60):
        while any(count[0] < at for count, at in zip(counts, wanted, strict=True)):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_nothing_of_a_user_is_stored_after_the_suppression_answers(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with running(make_config(ADMIN)) as server:
        stop = asyncio.Event()
        rounds = [[0] for _ in range(6)]
        clients = [
            asyncio.create_task(_keep_sending(http, server, f"c{n}", stop, rounds[n]))
            for n in range(6)
        ]
        await _each_goes_on(rounds, 1)
        await regulate(http, server, "SUPPRESS_ONLY", GONE)
        ((answered_seq,),) = query(data_dir, "SELECT max(seq) FROM messages")
        await _each_goes_on(rounds, 2)  # each client sent whole batches after the answer
        stop.set()
        await asyncio.gather(*clients)
    ((before,),) = query(
        data_dir,
        "SELECT count(*) FROM messages WHERE user_id = ? AND seq <= ?",
        (GONE, answered_seq),
    )
    ((after,),) = query(
        data_dir,
        "SELECT count(*) FROM messages WHERE user_id = ? AND seq > ?",
        (GONE, answered_seq),
    )
    ((kept_after,),) = query(
        data_dir,
        "SELECT count(*) FROM messages WHERE user_id = ? AND seq > ?",
        (KEPT, answered_seq),
    )
    assert before > 0
    assert after == 0
    assert kept_after > 0


async def test_suppress_with_delete_under_concurrent_ingest_leaves_nothing(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    warehouse: WarehouseProbe,
) -> None:
    async with running(make_config(ADMIN + warehouse.toml)) as server:
        stop = asyncio.Event()
        rounds = [[0] for _ in range(4)]
        clients = [
            asyncio.create_task(_keep_sending(http, server, f"c{n}", stop, rounds[n]))
            for n in range(4)
        ]
        syncs = [0]

        async def keep_syncing() -> None:
            while not stop.is_set():
                await server.warehouses.sync_now("wh")
                syncs[0] += 1

        syncing = asyncio.create_task(keep_syncing())
        await _each_goes_on([*rounds, syncs], 1)
        regulation_id = await regulate(http, server, "SUPPRESS_WITH_DELETE", GONE)
        found = await settled(http, server, regulation_id)
        await _each_goes_on([*rounds, syncs], 1)  # sent and synced after it finished
        stop.set()
        await asyncio.gather(*clients, syncing)
        await server.warehouses.sync_now("wh")
    assert found["overallStatus"] == "FINISHED", found
    assert outbox_mentions(data_dir, GONE) == {}
    assert await warehouse_mentions(warehouse, GONE) == {}
    assert await warehouse_mentions(warehouse, KEPT)


async def test_deletion_racing_a_replay_sends_nothing_more_and_replays_nothing(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async def slow(_: web.Request, __: bytes) -> web.StreamResponse:
        await asyncio.sleep(0.004)
        return web.Response(status=200)

    async with Sink(default=slow) as sink:
        config = make_config(ADMIN + hook("hook", sink.url, concurrency=1, batch_size=1))
        async with running(config) as server:
            lane = server.delivery.lanes["hook"]
            messages = [
                m
                for pair in zip(tracks(GONE, "r", 150), tracks(KEPT, "r", 150), strict=True)
                for m in pair
            ]
            await send(http, server, messages)
            await delivered(lane, 300)
            replay = {"destination": "hook", "since": "2000-01-01T00:00:00Z"}
            async with http.post(f"{server.url}/admin/replay", json=replay, headers=AUTH) as r:
                assert r.status == 200
                assert (await r.json())["queued"] == 300
            await sink.wait_for(lambda s: len(s.messages) >= 320)
            regulation_id = await regulate(http, server, "SUPPRESS_WITH_DELETE", GONE)
            found = await settled(http, server, regulation_id)
            gone_at_finish = sum(m.get("userId") == GONE for m in sink.messages)
            await sink.wait_for(lambda s: sum(m.get("userId") == KEPT for m in s.messages) >= 300)
            # Replayed again, after the deletion: the user's messages are no longer there.
            async with http.post(f"{server.url}/admin/replay", json=replay, headers=AUTH) as r:
                assert (await r.json())["queued"] == 150
            await sink.wait_for(lambda s: sum(m.get("userId") == KEPT for m in s.messages) >= 450)
    assert found["overallStatus"] == "FINISHED", found
    sent_to_gone = [m for m in sink.messages if m.get("userId") == GONE and m["type"] != "delete"]
    assert len(sent_to_gone) == gone_at_finish - 1  # the forwarded delete message is the -1
    assert len(sent_to_gone) < 300  # the replay was cut short
    assert outbox_mentions(data_dir, GONE) == {}


async def test_a_destination_is_asked_to_delete_after_its_requests_in_flight(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()
    async with Sink() as sink:
        sink.by_message[f"q-0-{GONE}"] = deque([hold(release)])
        async with running(make_config(ADMIN + hook("hook", sink.url))) as server:
            await send(http, server, tracks(GONE, "q", 1))
            await sink.wait_for_requests(1)  # held: the lane has it in flight
            regulation_id = await regulate(http, server, "DELETE_ONLY", GONE)
            await asyncio.sleep(0.5)
            assert sink.arrived == 1  # the delete waits for the request in flight
            release.set()
            found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "FINISHED", found
    assert [m["type"] for m in sink.messages] == ["track", "delete"]
