"""Delivery as a whole: the router, a lane per destination and the pruner, built from the
config, run as one group of tasks and stopped in order."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import cast

import aiohttp
import structlog

from cdpd.clock import Clock
from cdpd.config import Config, Destination
from cdpd.delivery import store
from cdpd.delivery.lane import Lane
from cdpd.delivery.retention import Pruner
from cdpd.delivery.router import Router
from cdpd.delivery.store import RoutingRule
from cdpd.destinations import actions, registry
from cdpd.destinations.actions import Action
from cdpd.destinations.base import Background, Closable
from cdpd.destinations.base import Destination as Sender
from cdpd.outbox.writer import OutboxWriter

log = structlog.get_logger()

LANE_RESTART_DELAY_S = 1.0


class Delivery:
    def __init__(
        self,
        config: Config,
        writer: OutboxWriter,
        session: aiohttp.ClientSession,
        clock: Clock,
        observer: Callable[[str], Callable[[float], None]] | None = None,
        warehouse_position: Callable[[], Awaitable[int | None]] | None = None,
    ) -> None:
        self._config = config.delivery
        self._writer = writer
        self._clock = clock
        enabled = [d for d in config.destinations if d.enabled]
        senders = {d.name: registry.build(d, clock) for d in enabled}
        self.senders = senders
        self.lanes = {
            d.name: Lane(
                d,
                senders[d.name],
                actions=senders[d.name].actions,
                writer=writer,
                session=session,
                clock=clock,
                retry=d.retry or config.delivery.retry,
                poll_interval_s=config.delivery.poll_interval_s,
                observe=observer(d.name) if observer else None,
            )
            for d in enabled
        }
        self.router = Router(
            writer,
            [routing_rule(d, senders[d.name].actions) for d in enabled],
            [d.name for d in config.destinations if not d.enabled],
            self.lanes,
            clock=clock,
            poll_interval_s=config.delivery.poll_interval_s,
        )
        self.pruner = Pruner(
            writer,
            config.delivery,
            clock,
            dedup_window_s=config.storage.dedup_window_s,
            warehouse_position=warehouse_position,
        )
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Recover from the last stop and set routing positions; before `run`, once the outbox
        writer runs, and before ingest opens (a new destination starts from that point)."""
        await self.router.start()

    async def run(self) -> None:
        """Route, deliver and prune until `stop()`; then let attempts in flight finish (up to
        the drain timeout) and put whatever is still claimed back to pending."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.router.run(self._stop), name="router")
                tasks.create_task(self.pruner.run(self._stop), name="pruner")
                for sender in self.senders.values():
                    if hasattr(sender, "run"):
                        tasks.create_task(
                            _background(sender, self._stop), name=f"background-{sender.name}"
                        )
                lanes = [
                    tasks.create_task(self._keep_running(lane), name=f"lane-{lane.name}")
                    for lane in self.lanes.values()
                ]
                await self._stop.wait()
                for lane in self.lanes.values():
                    lane.stop()
                await self._drain(lanes)
        finally:
            await self._close_senders()
            with suppress(Exception):
                released = await self._writer.transact(store.release_all)
                if released:
                    log.info("deliveries_released", count=released, reason="shutdown")

    async def _keep_running(self, lane: Lane) -> None:
        """Run the lane; should it fail (a bug, not a destination's error, which the lane
        records), put its claimed deliveries back and start it again, so one lane's fault
        neither stops the others nor leaves its deliveries stuck in flight."""
        while True:
            try:
                await lane.run()
                return
            except Exception:
                log.exception("delivery_lane_failed", destination=lane.name)
            if lane.stopping:
                return
            with suppress(Exception):
                await self._writer.transact(
                    functools.partial(store.release_destination, destination=lane.name)
                )
            if await self._clock.wait(self._stop, LANE_RESTART_DELAY_S):
                return

    async def _close_senders(self) -> None:
        for sender in self.senders.values():
            if hasattr(sender, "close"):
                try:
                    await cast(Closable, sender).close()
                except Exception:
                    log.exception("destination_close_failed", destination=sender.name)

    def stop(self) -> None:
        self._stop.set()
        self.router.wake()

    async def _drain(self, lanes: list[asyncio.Task[None]]) -> None:
        if not lanes:
            return
        _, unfinished = await asyncio.wait(lanes, timeout=self._config.drain_timeout_s)
        if unfinished:
            log.warning(
                "delivery_drain_timeout",
                lanes=len(unfinished),
                timeout_s=self._config.drain_timeout_s,
            )
            for task in unfinished:
                task.cancel()


async def _background(sender: Sender, stop: asyncio.Event) -> None:
    """A destination's work between sends; its failure is logged, and stops nothing else."""
    try:
        await cast(Background, sender).run(stop)
    except Exception:
        log.exception("destination_background_failed", destination=sender.name)


def routing_rule(destination: Destination, subscribed: list[Action] | None = None) -> RoutingRule:
    """Which messages the destination is owed: its filters, the integrations object, and at
    least one of its actions' subscriptions."""
    if subscribed is None:
        subscribed = registry.actions_of(destination)
    return RoutingRule(
        destination=destination.name,
        subscription=actions.subscription_sql(subscribed),
        catalog_name=registry.catalog_name(destination),
        ordered=destination.ordering == "user",
        sources=tuple(destination.sources) if destination.sources is not None else None,
        types=tuple(destination.types) if destination.types is not None else None,
        events=tuple(destination.events) if destination.events is not None else None,
        exclude_events=tuple(destination.exclude_events),
    )
