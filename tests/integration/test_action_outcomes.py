"""A delivery that several actions send: when one action's request succeeded and another's
failed, the retry sends only the one that failed (nothing is sent twice)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web

from cdpd.app import running
from tests.helpers import FakeClock, query
from tests.integration.test_delivery import MakeConfig, delivered, hook, recorded, send, track
from tests.sink import Sink

TWO_ACTIONS = """
[[destinations.actions]]
name = "first"
subscribe = 'type = "track"'
[destinations.actions.mapping]
data = { which = "first", id = { "@path" = "$.messageId" } }

[[destinations.actions]]
name = "second"
subscribe = 'type = "track"'
[destinations.actions.mapping]
data = { which = "second", id = { "@path" = "$.messageId" } }
"""


async def test_a_retry_sends_only_the_actions_that_failed(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    failures_left = {"second": 1}

    async def answer(_: web.Request, body: bytes) -> web.StreamResponse:
        which = msgspec.json.decode(body)["which"]
        if failures_left.get(which, 0) > 0:
            failures_left[which] -= 1
            return web.Response(status=503)
        return web.Response(status=200)

    clock = FakeClock()
    async with Sink(default=answer) as sink:
        config = make_config(hook("hook", sink.url) + TWO_ACTIONS)
        async with running(config, clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(1)])
            await recorded(lane, 1)
            assert query(data_dir, "SELECT seq, action FROM delivered_actions") == [(1, "first")]
            clock.advance(400)  # past any backoff
            await delivered(lane, 1)
    sent = [(msgspec.json.decode(r.body)["which"], r.status) for r in sink.received]
    assert sorted(sent) == [("first", 200), ("second", 200), ("second", 503)]
