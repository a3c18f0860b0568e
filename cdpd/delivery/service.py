"""Delivery as a whole: a lane per destination (each a consumer of the outbox) and the pruner,
built from the config, run as one group of supervised tasks and stopped in order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import aiohttp
import structlog

from cdpd.clock import Clock
from cdpd.config import Config, Destination
from cdpd.delivery.action_outcomes import ActionOutcomes
from cdpd.delivery.lane import Lane
from cdpd.delivery.retention import Pruner
from cdpd.delivery.store import DeliveryStore, RoutingRule, SqliteDeliveryStore
from cdpd.destinations import actions, registry
from cdpd.destinations.actions import Action
from cdpd.destinations.base import Background, close_all
from cdpd.model.timestamps import format_ms
from cdpd.outbox.writer import OutboxWriter
from cdpd.privacy.portal import Portal
from cdpd.supervise import Backoff, Restarts, supervise

log = structlog.get_logger()

LANE_BACKOFF = Backoff(initial_s=1.0, max_s=30.0)


class Delivery:
    def __init__(
        self,
        config: Config,
        writer: OutboxWriter,
        session: aiohttp.ClientSession,
        clock: Clock,
        observer: Callable[[str], Callable[[float], None]] | None = None,
        warehouse_position: Callable[[], Awaitable[int | None]] | None = None,
        restarts: Restarts | None = None,
        privacy: Portal | None = None,
    ) -> None:
        self._config = config.delivery
        self._drain_timeout_s = config.delivery.drain_timeout_s
        # The longest a request of any destination may take (a reload lets attempts finish).
        self._attempt_timeout_s = max(
            (d.timeout_s for d in config.destinations if d.enabled), default=0.0
        )
        self._writer = writer
        self._clock = clock
        self.store: DeliveryStore = SqliteDeliveryStore(
            writer.transact, Path(config.storage.outbox_path), writer.execute
        )
        enabled = [d for d in config.destinations if d.enabled]
        self._disabled = [d.name for d in config.destinations if not d.enabled]
        senders = {d.name: registry.build(d, clock) for d in enabled}
        self.senders = senders
        self.rules = {d.name: routing_rule(d, senders[d.name].actions) for d in enabled}
        self.lanes = {
            d.name: Lane(
                d,
                senders[d.name],
                actions=senders[d.name].actions,
                store=self.store,
                rule=self.rules[d.name],
                end_seq=lambda: writer.last_seq,
                session=session,
                clock=clock,
                retry=d.retry or config.delivery.retry,
                poll_interval_s=config.delivery.poll_interval_s,
                observe=observer(d.name) if observer else None,
                transform=destination_transform(config, d.name, privacy),
                action_outcomes=(
                    ActionOutcomes(writer, d.name) if len(senders[d.name].actions) > 1 else None
                ),
            )
            for d in enabled
        }
        self.erased: set[int] = set()  # seqs a regulation deleted (see Lane.erased)
        for lane in self.lanes.values():
            writer.on_messages(lane.work)
            lane.erased = self.erased
        self.pruner = Pruner(
            writer,
            config.delivery,
            clock,
            dedup_window_s=config.storage.dedup_window_s,
            warehouse_position=warehouse_position,
        )
        self.restarts = restarts or Restarts()
        self._stop = asyncio.Event()
        self._drain_timeout_s = self._config.drain_timeout_s

    def in_flight(self, destination: str) -> int:
        """How many messages the destination's lane is sending now (0 without a lane)."""
        lane = self.lanes.get(destination)
        return lane.stats.in_flight if lane is not None else 0

    async def start(self) -> None:
        """Recover from the last stop and set positions; before `run`, once the outbox writer
        runs, and before ingest opens (a new destination starts from that point)."""
        await self.store.start(
            list(self.lanes),
            self._disabled,
            self._writer.last_seq,
            format_ms(self._clock.now_ms()),
        )

    async def run(self) -> None:
        """Deliver and prune until `stop()`; then let attempts in flight finish (up to the
        drain timeout). Every task is supervised: one that fails (a bug, not a destination's
        error, which its lane records) is logged and started again, from the positions
        stored, so one lane's fault stops neither the others nor the daemon."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._supervised("pruner", self.pruner.run), name="pruner")
                for sender in self.senders.values():
                    if hasattr(sender, "run"):
                        tasks.create_task(
                            self._supervised(
                                f"background:{sender.name}", cast(Background, sender).run
                            ),
                            name=f"background-{sender.name}",
                        )
                lanes = [
                    tasks.create_task(
                        self._supervised(f"delivery:{lane.name}", lane.run),
                        name=f"lane-{lane.name}",
                    )
                    for lane in self.lanes.values()
                ]
                await self._stop.wait()
                for lane in self.lanes.values():
                    lane.stop()
                await self._drain(lanes)
        finally:
            for lane in self.lanes.values():
                self._writer.off_messages(lane.work)
            await close_all(self.senders.values())

    async def _supervised(self, name: str, run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        await supervise(
            name, run, self._stop, clock=self._clock, backoff=LANE_BACKOFF, restarts=self.restarts
        )

    def stop(
        self, drain_timeout_s: float | None = None, *, let_attempts_finish: bool = False
    ) -> None:
        """Stop delivering. Attempts in flight get `drain_timeout_s` (at most the configured
        one: SIGTERM's budget), or with `let_attempts_finish` (a reload) as long as their own
        request timeout needs."""
        if drain_timeout_s is not None:
            self._drain_timeout_s = min(self._drain_timeout_s, max(drain_timeout_s, 0.0))
        if let_attempts_finish:
            self._drain_timeout_s = max(self._drain_timeout_s, self._attempt_timeout_s + 1)
        self._stop.set()
        for lane in self.lanes.values():
            lane.stop()

    async def _drain(self, lanes: list[asyncio.Task[None]]) -> None:
        if not lanes:
            return
        _, unfinished = await asyncio.wait(lanes, timeout=self._drain_timeout_s)
        if unfinished:
            log.warning(
                "delivery_drain_timeout",
                lanes=len(unfinished),
                timeout_s=self._drain_timeout_s,
            )
            for task in unfinished:
                task.cancel()


def destination_transform(
    config: Config, destination: str, privacy: Portal | None
) -> Callable[[str, str], str] | None:
    """The destination's Protocols transformations, then its privacy controls, applied to its
    copy of each message (after its filters, as Segment applies destination-scoped ones);
    None when it has neither."""
    from cdpd.governance.transformations import destination_scoped

    transformations = destination_scoped(config.transformations, destination) or None
    controls = privacy.destination_controls(destination) if privacy is not None else None
    if transformations is None or controls is None:
        found = transformations or controls
        return found.payload if found is not None else None
    first, then = transformations.payload, controls.payload
    return lambda source, payload: then(source, first(source, payload))


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
