"""Replay: dead deliveries back to pending, or archived messages owed again to a destination
(how a new destination is back-filled). Used by `cdpd replay` (on the outbox file directly) and
by the admin endpoint (through the running daemon's writer)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosqlite

from cdpd.config import Destination
from cdpd.delivery import store
from cdpd.delivery.service import routing_rule
from cdpd.model.timestamps import format_ms, now_ms

T = TypeVar("T")
Transact = Callable[[Callable[[aiosqlite.Connection], Awaitable[T]]], Awaitable[T]]


async def replay_dead(transact: Transact[int], destination: Destination) -> int:
    return await transact(
        functools.partial(
            store.replay_dead, destination=destination.name, now_at=format_ms(now_ms())
        )
    )


async def replay_range(
    transact: Transact[int],
    destination: Destination,
    since_at: str,
    until_at: str,
    source: str | None,
) -> int:
    """Owe `destination` every eligible message received in [since_at, until_at)."""
    rule = routing_rule(destination)

    async def run(conn: aiosqlite.Connection) -> int:
        seq_range = await store.seq_bounds(conn, since_at, until_at)
        return await store.replay_range(
            conn, rule, seq_range, (since_at, until_at), source, format_ms(now_ms())
        )

    return await transact(run)


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
