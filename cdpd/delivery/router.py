"""The router: turns newly committed messages into the deliveries each destination is owed.

Each destination has a routing position in the outbox (`delivery_routing`); the deliveries for
messages past it are created, and the position moved, in one transaction, so a crash can
neither skip a message nor owe it twice.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping

import aiosqlite
import structlog

from cdpd.clock import Clock
from cdpd.delivery import store
from cdpd.delivery.lane import Lane
from cdpd.delivery.store import RoutingRule
from cdpd.model.timestamps import format_ms
from cdpd.outbox.writer import OutboxWriter

log = structlog.get_logger()

MAX_SEQS_PER_ROUTE = 10_000  # keeps one routing transaction short after a long backlog


class Router:
    def __init__(
        self,
        writer: OutboxWriter,
        rules: list[RoutingRule],
        disabled: list[str],
        lanes: Mapping[str, Lane],
        *,
        clock: Clock,
        poll_interval_s: float,
    ) -> None:
        self._writer = writer
        self._rules = rules
        self._disabled = disabled
        self._lanes = lanes
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._new_messages = asyncio.Event()
        self._positions: dict[str, int] = {}
        writer.on_messages(self._new_messages)

    async def start(self) -> None:
        """Give destinations seen for the first time a routing position at the outbox's end."""
        self._positions = await self._writer.transact(self._start)

    async def _start(self, conn: aiosqlite.Connection) -> dict[str, int]:
        released = await store.release_all(conn)
        if released:
            log.info("deliveries_released", count=released, reason="in flight at the last stop")
        enabled = [rule.destination for rule in self._rules]
        now_at = format_ms(self._clock.now_ms())
        abandoned = await store.forget_others(conn, enabled, self._disabled, now_at)
        if abandoned:
            log.warning("deliveries_abandoned", count=abandoned, reason="destination gone")
        for name in enabled + self._disabled:
            await store.start_routing(conn, name, self._writer.last_seq)
        return await store.routing_positions(conn)

    def wake(self) -> None:
        self._new_messages.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.route_once()
            except Exception:  # the outbox refused this time (locked, full): next round
                log.exception("routing_failed")
            await self._clock.wait(self._new_messages, self._poll_interval_s)
            self._new_messages.clear()

    async def route_once(self) -> None:
        """Route everything committed so far."""
        while (up_to := self._writer.last_seq) > min(self._positions.values(), default=up_to):
            created, positions = await self._writer.transact(
                functools.partial(self._route, up_to=up_to)
            )
            self._positions.update(positions)  # only once committed
            for name, count in created.items():
                if count and name in self._lanes:
                    self._lanes[name].wake()

    async def _route(
        self, conn: aiosqlite.Connection, up_to: int
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Returns the deliveries created and the new positions, per destination."""
        now_at = format_ms(self._clock.now_ms())
        created, positions = {}, {}
        for rule in self._rules:
            after = self._positions[rule.destination]
            end = min(up_to, after + MAX_SEQS_PER_ROUTE)
            if end > after:
                created[rule.destination] = await store.route(conn, rule, after, end, now_at)
                positions[rule.destination] = end
        for name in self._disabled:
            if up_to > self._positions[name]:
                await store.skip_routing(conn, name, up_to)
                positions[name] = up_to
        return created, positions
