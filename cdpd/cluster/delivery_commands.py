"""`cdpd deliveries` and `cdpd replay --dead` on the JetStream backend: each opens a connection to
the cluster, asks, and closes it (cdpd/cluster/operations.py answers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import JetStreamContext

from cdpd.cluster import operations
from cdpd.cluster.connect import connected
from cdpd.cluster.delivery import node_name
from cdpd.cluster.layout import Layout
from cdpd.config import Config
from cdpd.delivery.report import DeadDelivery, DestinationReport
from cdpd.destinations.settings import Destination

T = TypeVar("T")


async def _asking(config: Config, ask: Callable[[JetStreamContext, Layout], Awaitable[T]]) -> T:
    jetstream = config.storage.jetstream
    async with connected(jetstream, name="cdpd deliveries") as client:
        return await ask(client.jetstream(), Layout.of(jetstream))


async def stats(config: Config) -> list[DestinationReport]:
    return await _asking(
        config, lambda js, layout: operations.reports(js, layout, config.destinations)
    )


async def dead(config: Config, destination: str | None, limit: int) -> list[DeadDelivery]:
    return await _asking(
        config, lambda js, layout: operations.dead_deliveries(js, layout, destination, limit)
    )


async def replay_dead(config: Config, destination: str) -> int:
    return await _asking(config, lambda js, layout: operations.replay_dead(js, layout, destination))


async def retry(config: Config, destination: Destination) -> int:
    return await _asking(
        config, lambda js, layout: operations.retry(js, layout, destination, node_name())
    )
