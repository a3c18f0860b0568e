"""How the profiles lease holder waits for commands on the JetStream backend (real cluster, real
node): on a long fetch of its own consumer of the commands stream, which a lost consumer does
not leave deaf."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from nats.js.api import ConsumerInfo

from cdpd.cluster.layout import Layout
from cdpd.cluster.node import running_node
from cdpd.cluster.profile_commands import DONE, FORGET, ProfileCommands
from cdpd.cluster.profiles import ProfilesLeader
from tests.cluster_support import jetstream_config, jetstream_text
from tests.jetstream_cluster import JetStreamCluster

IDENTITY = '[identity]\nspace = "main"\naccess_tokens = ["tok"]\n'


async def _waiting_consumers(
    js: nats.js.JetStreamContext, timeout_s: float = 60.0
) -> list[ConsumerInfo]:
    """The commands stream's consumers, once one has a pull request waiting on the server."""
    for _ in range(round(timeout_s / 0.1)):
        found = await js.consumers_info(Layout().commands_stream)
        if any(info.num_waiting for info in found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("no consumer of the commands stream waits on a fetch")


async def test_an_idle_holder_waits_on_a_fetch_and_a_lost_consumer_misses_no_command(
    tmp_path: Path, js_cluster: JetStreamCluster
) -> None:
    text = jetstream_text(tmp_path / "a", js_cluster.urls, IDENTITY)
    async with running_node(jetstream_config(tmp_path / "a.toml", text), node_name="a") as a:
        leader = a.stages["profiles"]
        assert isinstance(leader, ProfilesLeader)
        client = await nats.connect(js_cluster.urls)
        try:
            js = client.jetstream()
            for info in await _waiting_consumers(js):
                await js.delete_consumer(Layout().commands_stream, info.name)
            outcome = await ProfileCommands(js, Layout()).ask(FORGET, 60.0, users=["nobody"])
            assert (outcome.state, outcome.rows) == (DONE, 0), outcome
            assert leader.commands is not None
            assert leader.commands.carried_out == 1
            await _waiting_consumers(js)  # a new one, past the command carried out
        finally:
            await client.close()
