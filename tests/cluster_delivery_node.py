"""A delivery node as a process of its own, for tests that `kill -9` one:
`python -m tests.cluster_delivery_node CONFIG NAME` delivers until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp

from cdpd import config as cdpd_config
from cdpd.clock import SystemClock
from cdpd.cluster import connect
from cdpd.cluster.delivery import ClusterDelivery
from cdpd.cluster.layout import Layout


async def main(path: str, name: str) -> None:
    config = cdpd_config.load(path)
    jetstream = config.storage.jetstream
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with (
        connect.connected(jetstream, name=name) as client,
        aiohttp.ClientSession() as session,
    ):
        js = client.jetstream()
        await connect.ensure(js, jetstream, Layout.of(jetstream))
        delivery = ClusterDelivery(config, js, session, SystemClock(), node=name)
        await delivery.start()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await delivery.run(stop)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
