"""How the profiles lease holder waits on the JetStream backend (real cluster, real node): for
commands, and for new messages once its identity stage is caught up, on long fetches of
consumers of its own, which a lost consumer does not leave deaf."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import nats
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from cdpd.cluster.layout import Layout
from cdpd.cluster.node import running_node
from cdpd.cluster.profile_commands import DONE, FORGET, ProfileCommands
from cdpd.cluster.profiles import ProfilesLeader
from tests.cluster_support import jetstream_config, jetstream_text
from tests.helpers import WRITE_KEY, basic_auth
from tests.jetstream_cluster import JetStreamCluster

AUTH = {"Authorization": basic_auth(WRITE_KEY)}
IDENTITY = '[identity]\nspace = "main"\naccess_tokens = ["tok"]\n'


async def _waiting_consumers(
    js: nats.js.JetStreamContext, stream: str, timeout_s: float = 60.0
) -> list[ConsumerInfo]:
    """The stream's consumers, once one has a pull request waiting on the server."""
    for _ in range(round(timeout_s / 0.1)):
        found = await js.consumers_info(stream)
        if any(info.num_waiting for info in found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no consumer of {stream} waits on a fetch")


async def _delete(js: nats.js.JetStreamContext, stream: str, found: list[ConsumerInfo]) -> None:
    for info in found:
        with contextlib.suppress(NotFoundError):  # replaced meanwhile: as lost
            await js.delete_consumer(stream, info.name)


async def test_an_idle_holder_waits_on_a_fetch_and_a_lost_consumer_misses_no_command(
    tmp_path: Path, js_cluster: JetStreamCluster
) -> None:
    text = jetstream_text(tmp_path / "a", js_cluster.urls, IDENTITY)
    async with running_node(jetstream_config(tmp_path / "a.toml", text), node_name="a"):
        client = await nats.connect(js_cluster.urls)
        try:
            js = client.jetstream()
            await _delete(
                js, Layout().commands_stream, await _waiting_consumers(js, Layout().commands_stream)
            )
            outcome = await ProfileCommands(js, Layout()).ask(FORGET, 60.0, users=["nobody"])
            assert (outcome.state, outcome.rows) == (DONE, 0), outcome
            await _waiting_consumers(js, Layout().commands_stream)  # a new one, past it
        finally:
            await client.close()


async def test_a_caught_up_identity_stage_waits_on_a_fetch_and_a_lost_waiter_misses_nothing(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    text = jetstream_text(tmp_path / "a", js_cluster.urls, IDENTITY)
    async with running_node(jetstream_config(tmp_path / "a.toml", text), node_name="a") as a:
        leader = a.stages["profiles"]
        assert isinstance(leader, ProfilesLeader)
        client = await nats.connect(js_cluster.urls)
        try:
            js = client.jetstream()
            await _delete(js, Layout().stream, await _waiting_consumers(js, Layout().stream))
            identify = {"type": "identify", "userId": "u1", "anonymousId": "x1"}
            async with http.post(f"{a.url}/v1/identify", json=identify, headers=AUTH) as r:
                assert r.status == 200, await r.text()
            for _ in range(600):
                if leader.identity is not None and leader.identity.committed_seq >= 1:
                    break
                await asyncio.sleep(0.1)
            assert leader.identity is not None
            assert sum(leader.identity.profile_counts().values()) == 1
            await _waiting_consumers(js, Layout().stream)  # a new one, past the message
        finally:
            await client.close()
