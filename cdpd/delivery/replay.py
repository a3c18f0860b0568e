"""Replay: dead deliveries back to pending, or archived messages sent again to a destination
(how a new destination is back-filled: a replay job with a position of its own, which the
destination's lane reads beside its live messages). Used by `cdpd replay` (on the outbox file
directly) and by the admin endpoint (through the running daemon's writer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosqlite

from cdpd.config import ConfigError, Destination
from cdpd.delivery.service import routing_rule
from cdpd.delivery.store import DeliveryStore
from cdpd.model.timestamps import format_ms, now_ms

T = TypeVar("T")


async def replay_dead(store: DeliveryStore, destination: Destination) -> int:
    _check_enabled(destination)
    return await store.replay_dead(destination.name, format_ms(now_ms()))


async def replay_range(
    store: DeliveryStore,
    destination: Destination,
    since_at: str,
    until_at: str,
    source: str | None,
) -> int:
    """Send `destination` again every eligible message received in [since_at, until_at) (the
    ones its lane has not reached yet it sends anyway); returns how many the job will send."""
    _check_enabled(destination)
    rule = routing_rule(destination)
    _, count = await store.replay_range(rule, since_at, until_at, source, format_ms(now_ms()))
    return count


def _check_enabled(destination: Destination) -> None:
    if not destination.enabled:
        raise ConfigError(
            f"destination {destination.name!r} is disabled: enable it before replaying to it"
        )


async def in_transaction(
    conn: aiosqlite.Connection, operation: Callable[[aiosqlite.Connection], Awaitable[T]]
) -> T:
    """Run `operation` in its own transaction on a connection the caller owns (the CLI's)."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        result = await operation(conn)
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return result
