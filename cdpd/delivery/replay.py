"""Replay: dead deliveries back to pending, or archived messages owed again to a destination
(how a new destination is back-filled). Used by `cdpd replay` (on the outbox file directly) and
by the admin endpoint (through the running daemon's writer). Work goes in chunks, each its own
short transaction, so a big replay never holds the outbox's write lock for long."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import aiosqlite

from cdpd.config import ConfigError, Destination
from cdpd.delivery import store
from cdpd.delivery.service import routing_rule
from cdpd.model.timestamps import format_ms, now_ms

T = TypeVar("T")


class Transact(Protocol):
    """Runs an operation in a transaction: the daemon's writer, or the CLI's own connection."""

    def __call__(
        self, operation: Callable[[aiosqlite.Connection], Awaitable[T]]
    ) -> Awaitable[T]: ...


async def replay_dead(transact: Transact, destination: Destination) -> int:
    _check_enabled(destination)
    total = 0
    while True:
        count = await transact(
            functools.partial(
                store.replay_dead, destination=destination.name, now_at=format_ms(now_ms())
            )
        )
        total += count
        if count < store.REPLAY_CHUNK:
            return total


async def replay_range(
    transact: Transact,
    destination: Destination,
    since_at: str,
    until_at: str,
    source: str | None,
) -> int:
    """Owe `destination` every eligible message received in [since_at, until_at)."""
    _check_enabled(destination)
    rule = routing_rule(destination)
    first, last = await transact(
        functools.partial(store.seq_bounds, since_at=since_at, until_at=until_at)
    )
    total = 0
    for start in range(first, last + 1, store.REPLAY_CHUNK):
        seq_range = (start, min(last, start + store.REPLAY_CHUNK - 1))
        total += await transact(
            functools.partial(
                store.replay_range,
                rule=rule,
                seq_range=seq_range,
                received_range=(since_at, until_at),
                source=source,
                now_at=format_ms(now_ms()),
            )
        )
    return total


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
