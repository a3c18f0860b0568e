"""`cdpd deliveries` and `cdpd replay` on the JetStream backend: each opens a connection to the
cluster, asks its delivery store (cdpd/cluster/store.py) or cdpd/cluster/operations.py, and
closes it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import JetStreamContext

from cdpd.clock import SystemClock
from cdpd.cluster import operations
from cdpd.cluster.connect import connected
from cdpd.cluster.delivery import delivery_store, node_name
from cdpd.cluster.store import JetStreamDeliveryStore
from cdpd.config import Config
from cdpd.delivery import replay
from cdpd.delivery.report import DeadDelivery, DestinationReport
from cdpd.delivery.service import routing_rule
from cdpd.delivery.store import DeliveryStatus
from cdpd.destinations.settings import Destination

T = TypeVar("T")


async def _asking(
    config: Config, ask: Callable[[JetStreamDeliveryStore, JetStreamContext], Awaitable[T]]
) -> T:
    jetstream = config.storage.jetstream
    async with connected(jetstream, name="cdpd deliveries") as client:
        js = client.jetstream()
        return await ask(delivery_store(config, js, SystemClock()), js)


async def stats(config: Config) -> list[DestinationReport]:
    return await _asking(
        config, lambda store, js: operations.reports(store, js, config.destinations)
    )


async def dead(config: Config, destination: str | None, limit: int) -> list[DeadDelivery]:
    return await _asking(
        config,
        lambda store, js: operations.dead_deliveries(js, store.layout, destination, limit),
    )


async def show(config: Config, message_id: str) -> list[DeliveryStatus]:
    rules = [routing_rule(d) for d in config.destinations]
    return await _asking(config, lambda store, _: store.show(message_id, rules))


async def replay_dead(config: Config, destination: Destination) -> int:
    return await _asking(config, lambda store, _: replay.replay_dead(store, destination))


async def replay_range(
    config: Config, destination: Destination, since: str, until: str, source: str | None
) -> int:
    return await _asking(
        config,
        lambda store, _: replay.replay_range(store, destination, since, until, source),
    )


async def retry(config: Config, destination: Destination) -> int:
    return await _asking(
        config, lambda store, js: operations.retry(store, js, destination, node_name())
    )
