"""Delivery on the JetStream backend: a lane per enabled destination, each reading the durable
consumer(s) every node shares and recording its outcomes through the node's delivery store
(cdpd/cluster/lane.py, store.py, reader.py), with the destination's circuit and rate limit
shared through key-value buckets (cdpd/cluster/shared.py). Run as supervised tasks and
stopped as a drain: attempts in flight finish, then the lanes return."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
import structlog
from nats.js import JetStreamContext

from cdpd.clock import Clock
from cdpd.cluster.lane import JetStreamLane
from cdpd.cluster.layout import Layout
from cdpd.cluster.shared import GlobalRateLimit, SharedCircuit
from cdpd.cluster.store import JetStreamDeliveryStore
from cdpd.config import Config
from cdpd.delivery.service import destination_transform, routing_rule
from cdpd.destinations import registry
from cdpd.destinations.base import Background, Destination, close_all
from cdpd.model.timestamps import format_ms
from cdpd.privacy.portal import Portal
from cdpd.supervise import Backoff, Restarts, supervise

log = structlog.get_logger()

LANE_BACKOFF = Backoff(initial_s=1.0, max_s=30.0)


def node_name() -> str:
    """How a node names itself in shared state (who opened a circuit, who probes)."""
    import os

    return f"{socket.gethostname()}:{os.getpid()}"


class ClusterDelivery:
    def __init__(
        self,
        config: Config,
        js: JetStreamContext,
        session: aiohttp.ClientSession,
        clock: Clock,
        *,
        node: str | None = None,
        observer: Callable[[str], Callable[[float], None]] | None = None,
        restarts: Restarts | None = None,
        privacy: Portal | None = None,
        store: JetStreamDeliveryStore | None = None,  # a node's (NodeParts.delivery_store)
    ) -> None:
        self._config = config
        self._privacy = privacy  # its inventory follows the cluster's (privacy_stage.py)
        self._js = js
        self._session = session
        self._clock = clock
        self.node = node or node_name()
        self._observer = observer
        self.layout = Layout.of(config.storage.jetstream)
        self.restarts = restarts or Restarts()
        self.senders: dict[str, Destination] = {}
        self.lanes: dict[str, JetStreamLane] = {}
        self.store = store or delivery_store(config, js, clock)
        self._drain_timeout_s = config.delivery.drain_timeout_s

    def in_flight(self, destination: str) -> int:
        lane = self.lanes.get(destination)
        return lane.stats.in_flight if lane is not None else 0

    async def start(self) -> None:
        """Build a lane per enabled destination and start the store (which creates the
        durable consumers); before ingest opens, so a new destination starts with what is
        accepted from then on."""
        circuits = await self._js.key_value(self.layout.circuits_bucket)
        rates = await self._js.key_value(self.layout.rates_bucket)
        enabled = [d for d in self._config.destinations if d.enabled]
        for d in enabled:
            sender = registry.build(d, self._clock)
            self.senders[d.name] = sender
            self.lanes[d.name] = JetStreamLane(
                d,
                sender,
                actions=sender.actions,
                rule=routing_rule(d, sender.actions),
                store=self.store,
                circuit=SharedCircuit(circuits, rates, d.name, self.node, self._clock),
                rate=GlobalRateLimit(rates, d.name, d.rate_limit_per_s, self._clock),
                session=self._session,
                clock=self._clock,
                retry=d.retry or self._config.delivery.retry,
                partitions=self.layout.partitions,
                transform=destination_transform(self._config, d.name, self._privacy),
                observe=self._observer(d.name) if self._observer else None,
            )
        disabled = [d.name for d in self._config.destinations if not d.enabled]
        at = format_ms(self._clock.now_ms())
        await self.store.start([d.name for d in enabled], disabled, 0, at)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, then let the attempts in flight finish (up to the
        drain timeout; what is cut off is redelivered after `ack_wait`)."""
        lane_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tasks:
                for sender in self.senders.values():
                    if hasattr(sender, "run"):
                        run = cast(Background, sender).run
                        tasks.create_task(self._supervised(f"background:{sender.name}", run, stop))
                lanes = [
                    tasks.create_task(
                        self._supervised(f"delivery:{lane.name}", lane.run, lane_stop),
                        name=f"jetstream-lane-{lane.name}",
                    )
                    for lane in self.lanes.values()
                ]
                await stop.wait()
                lane_stop.set()
                await self._drain(lanes)
        finally:
            await close_all(self.senders.values())

    async def _supervised(
        self, name: str, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        await supervise(
            name, run, stop, clock=self._clock, backoff=LANE_BACKOFF, restarts=self.restarts
        )

    async def _drain(self, lanes: list[asyncio.Task[None]]) -> None:
        if not lanes:
            return
        _, unfinished = await asyncio.wait(lanes, timeout=self._drain_timeout_s)
        if unfinished:
            log.warning("delivery_drain_timeout", lanes=len(unfinished))
            for task in unfinished:
                task.cancel()


def delivery_store(config: Config, js: JetStreamContext, clock: Clock) -> JetStreamDeliveryStore:
    """The delivery store on the cluster, for a node's lanes or for one CLI command."""
    jetstream = config.storage.jetstream
    by_source = config.storage.dedup_scope == "source"
    return JetStreamDeliveryStore(
        js,
        Layout.of(jetstream),
        config.destinations,
        clock=clock,
        ack_wait_s=jetstream.ack_wait_s,
        sources=[s.name for s in config.sources] if by_source else [],
    )
