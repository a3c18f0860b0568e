"""Delivery on the JetStream backend: a lane per enabled destination, each reading the durable
consumer(s) every node shares (cdpd/cluster/lane.py), with the destination's circuit and rate
limit shared through key-value buckets (cdpd/cluster/shared.py). Run as supervised tasks and
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
from cdpd.cluster.routing import Router
from cdpd.cluster.shared import GlobalRateLimit, SharedCircuit
from cdpd.config import Config
from cdpd.delivery.service import destination_transform, routing_rule
from cdpd.destinations import registry
from cdpd.destinations.base import Background, Destination, close_all
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
        self._drain_timeout_s = config.delivery.drain_timeout_s

    def in_flight(self, destination: str) -> int:
        lane = self.lanes.get(destination)
        return lane.stats.in_flight if lane is not None else 0

    async def start(self) -> None:
        """Build a lane per enabled destination and create its durable consumers; before
        ingest opens, so a new destination starts with what is accepted from then on."""
        circuits = await self._js.key_value(self.layout.circuits_bucket)
        rates = await self._js.key_value(self.layout.rates_bucket)
        for d in (d for d in self._config.destinations if d.enabled):
            sender = registry.build(d, self._clock)
            self.senders[d.name] = sender
            lane = JetStreamLane(
                d,
                sender,
                actions=sender.actions,
                router=Router(routing_rule(d, sender.actions), sender.actions),
                js=self._js,
                layout=self.layout,
                circuit=SharedCircuit(circuits, rates, d.name, self.node, self._clock),
                rate=GlobalRateLimit(rates, d.name, d.rate_limit_per_s, self._clock),
                session=self._session,
                clock=self._clock,
                retry=d.retry or self._config.delivery.retry,
                ack_wait_s=self._config.storage.jetstream.ack_wait_s,
                transform=destination_transform(self._config, d.name, self._privacy),
                observe=self._observer(d.name) if self._observer else None,
            )
            await lane.ensure_consumers()
            self.lanes[d.name] = lane

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
