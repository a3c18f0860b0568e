"""Deliveries and attempts in the outbox: every state change, in one place.

States: `pending` (owed, never tried) -> `in_flight` (claimed by its lane) -> `delivered`, or
`retrying` (waiting for `next_attempt_at`) and back to `in_flight`, or `dead` (given up; replay
puts it back to `pending`). In-flight deliveries found at start-up were cut short by a crash and
return to `pending`/`retrying` without counting an attempt.

The functions that change state take the writer's connection and run inside a writer operation
(`OutboxWriter.transact`); they never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiosqlite
import msgspec

from cdpd.model.timestamps import format_ms, parse_ms

PENDING, IN_FLIGHT, RETRYING, DELIVERED, DEAD = (
    "pending",
    "in_flight",
    "retrying",
    "delivered",
    "dead",
)
STATES = (PENDING, IN_FLIGHT, RETRYING, DELIVERED, DEAD)
PRUNE_CHUNK = 1000
IDS_PER_STATEMENT = 500  # well under SQLite's limit of bound parameters
REPLAY_CHUNK = 10_000  # messages or deliveries per replay transaction


class RoutingRule(msgspec.Struct, frozen=True):
    """Which messages a destination is owed (config filters plus the `integrations` object)."""

    destination: str
    catalog_name: str
    subscription: tuple[str, list[Any]] = ("1", [])  # SQL: some action subscribes to it
    ordered: bool = False  # per-user ordering: only then do deliveries carry an order key
    sources: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    events: tuple[str, ...] | None = None
    exclude_events: tuple[str, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        """A SQL condition on `messages` (and its parameters) true for eligible messages.

        `integrations` follows analytics.js: the value for the destination's configured name,
        else for its catalog name, else `All`, else true; only an explicit `false` disables
        (an object means enabled, with options)."""
        clauses = [
            "coalesce(payload ->> ?, payload ->> ?, payload ->> '$.integrations.All', 1) != 0",
            self.subscription[0],
        ]
        params: list[Any] = [
            _integration_path(self.destination),
            _integration_path(self.catalog_name),
            *self.subscription[1],
        ]
        for column, values in (("source", self.sources), ("type", self.types)):
            if values is not None:
                clauses.append(f"{column} IN ({_marks(values)})")
                params += values
        if self.events is not None:
            clauses.append(f"(type != 'track' OR event IN ({_marks(self.events)}))")
            params += self.events
        if self.exclude_events:
            clauses.append(f"(type != 'track' OR event NOT IN ({_marks(self.exclude_events)}))")
            params += self.exclude_events
        return " AND ".join(clauses), params

    def order_key(self) -> str:
        return "coalesce(user_id, anonymous_id)" if self.ordered else "NULL"


class Claimed(msgspec.Struct, frozen=True, gc=False):
    id: int
    seq: int
    message_id: str
    attempts: int
    first_attempt_at: str | None
    payload: str


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """The result of one attempt at one delivery, as it is recorded (the field order is the
    order of the placeholders in _RECORD_DELIVERY and _RECORD_ATTEMPT)."""

    delivery_id: int
    destination: str
    message_id: str
    attempt: int
    started_at: str
    duration_ms: float
    status: int | None
    error: str | None
    state: str  # delivered, retrying or dead; the attempt's outcome
    first_attempt_at: str
    next_attempt_at: str
    finished_at: str | None


# -- routing -------------------------------------------------------------------------------------


async def routing_positions(conn: aiosqlite.Connection) -> dict[str, int]:
    rows = await _rows(conn, "SELECT destination, routed_seq FROM delivery_routing")
    return {name: int(seq) for name, seq in rows}


async def start_routing(conn: aiosqlite.Connection, destination: str, from_seq: int) -> None:
    """A destination seen for the first time is owed messages from now on (replay back-fills)."""
    await conn.execute(
        "INSERT INTO delivery_routing (destination, routed_seq) VALUES (?, ?) "
        "ON CONFLICT (destination) DO NOTHING",
        (destination, from_seq),
    )


async def forget_others(
    conn: aiosqlite.Connection, enabled: Sequence[str], disabled: Sequence[str], now_at: str
) -> int:
    """Destinations no longer in the config lose their routing position (one added again
    starts from then). Unfinished deliveries of destinations removed or disabled become dead,
    so they neither hold back retention nor vanish without a trace (replay them once the
    destination is back). Returns how many deliveries were given up."""
    configured = [*enabled, *disabled]
    others = f"destination NOT IN ({_marks(configured)})" if configured else "1"
    await conn.execute(f"DELETE FROM delivery_routing WHERE {others}", configured)
    given_up = 0
    for why, condition, params in (
        ("the destination is no longer configured", others, configured),
        ("the destination is disabled", f"destination IN ({_marks(disabled)})", list(disabled)),
    ):
        if params or why.endswith("configured"):
            cursor = await conn.execute(
                "UPDATE deliveries SET state = 'dead', finished_at = ?, last_error = ?"
                f" WHERE state IN ('pending', 'retrying', 'in_flight') AND {condition}",
                [now_at, why, *params],
            )
            given_up += int(cursor.rowcount)
    return given_up


async def route(
    conn: aiosqlite.Connection, rule: RoutingRule, after_seq: int, up_to_seq: int, now_at: str
) -> int:
    """Create the deliveries owed for messages in (after_seq, up_to_seq] and move the
    destination's routing position; returns how many were created."""
    condition, params = rule.where()
    cursor = await conn.execute(
        "INSERT INTO deliveries (destination, seq, message_id, order_key, state, created_at,"
        " next_attempt_at)"
        f" SELECT ?, seq, message_id, {rule.order_key()}, 'pending', ?, ?"
        f" FROM messages WHERE seq > ? AND seq <= ? AND {condition}"
        " ON CONFLICT (destination, seq) DO NOTHING",
        [rule.destination, now_at, now_at, after_seq, up_to_seq, *params],
    )
    await conn.execute(
        "UPDATE delivery_routing SET routed_seq = ? WHERE destination = ?",
        (up_to_seq, rule.destination),
    )
    return int(cursor.rowcount)


async def skip_routing(conn: aiosqlite.Connection, destination: str, up_to_seq: int) -> None:
    """A disabled destination is owed nothing sent while it is disabled."""
    await conn.execute(
        "UPDATE delivery_routing SET routed_seq = ? WHERE destination = ?", (up_to_seq, destination)
    )


# -- a lane's work -------------------------------------------------------------------------------

_CLAIM = """
SELECT d.id, d.seq, d.message_id, d.attempts, d.first_attempt_at, m.payload
FROM deliveries AS d JOIN messages AS m ON m.seq = d.seq
WHERE d.destination = ? AND d.state IN ('pending', 'retrying') AND d.next_attempt_at <= ?
{ordered}
ORDER BY d.next_attempt_at, d.id
LIMIT ?
"""
# Only the oldest unfinished delivery of each user (order key) may go out.
_ORDERED = """
AND (d.order_key IS NULL OR NOT EXISTS (
    SELECT 1 FROM deliveries AS e
    WHERE e.destination = d.destination AND e.order_key = d.order_key AND e.id < d.id
      AND e.state IN ('pending', 'retrying', 'in_flight') AND e.order_key IS NOT NULL
))
"""


async def claim(
    conn: aiosqlite.Connection, destination: str, now_at: str, limit: int, *, ordered: bool
) -> list[Claimed]:
    """Mark up to `limit` due deliveries in flight and return them with their payloads."""
    sql = _CLAIM.format(ordered=_ORDERED if ordered else "")
    rows = await _rows(conn, sql, (destination, now_at, limit))
    claimed = [Claimed(*row) for row in rows]
    for start in range(0, len(claimed), IDS_PER_STATEMENT):
        ids = [c.id for c in claimed[start : start + IDS_PER_STATEMENT]]
        await conn.execute(
            f"UPDATE deliveries SET state = 'in_flight' WHERE id IN ({_marks(ids)})", ids
        )
    return claimed


# Both statements take an Outcome's fields in their order (numbered placeholders), so the
# parameters are its tuple as it is: the first nine make an attempts row.
_RECORD_DELIVERY = (
    "UPDATE deliveries SET state = ?9, attempts = ?4, first_attempt_at = ?10,"
    " last_attempt_at = ?5, next_attempt_at = ?11, last_status = ?7, last_error = ?8,"
    " finished_at = ?12 WHERE id = ?1"
)
_RECORD_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, destination, message_id, attempt, started_at,"
    " duration_ms, status, error, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
)


async def record(conn: aiosqlite.Connection, outcomes: Sequence[Outcome]) -> None:
    """Store the outcome of attempts: the delivery's new state and one attempts row each."""
    rows = [msgspec.structs.astuple(outcome) for outcome in outcomes]
    await conn.executemany(_RECORD_DELIVERY, rows)
    await conn.executemany(_RECORD_ATTEMPT, [row[:9] for row in rows])


_RELEASE = (
    "UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END"
    " WHERE state = 'in_flight'"
)


async def release(conn: aiosqlite.Connection, ids: Sequence[int]) -> None:
    """Claimed deliveries that were not attempted go back, without counting an attempt."""
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        chunk = list(ids[start : start + IDS_PER_STATEMENT])
        await conn.execute(f"{_RELEASE} AND id IN ({_marks(chunk)})", chunk)


async def release_destination(conn: aiosqlite.Connection, destination: str) -> int:
    """Everything a lane had claimed goes back (the lane has stopped attempting)."""
    cursor = await conn.execute(f"{_RELEASE} AND destination = ?", (destination,))
    return int(cursor.rowcount)


async def release_all(conn: aiosqlite.Connection) -> int:
    """At start-up: whatever was in flight when the process stopped goes back."""
    cursor = await conn.execute(_RELEASE)
    return int(cursor.rowcount)


async def next_due_at(
    conn: aiosqlite.Connection, destination: str, *, ordered: bool = False
) -> str | None:
    """When the next delivery the lane could claim is due (with ordering, only the oldest of
    each user's counts: the others wait for it, not for their own time)."""
    rows = await _rows(
        conn,
        "SELECT min(d.next_attempt_at) FROM deliveries AS d"
        " WHERE d.destination = ? AND d.state IN ('pending', 'retrying')"
        + (_ORDERED if ordered else ""),
        (destination,),
    )
    return rows[0][0] if rows else None


# -- retention -----------------------------------------------------------------------------------


async def prune_finished(conn: aiosqlite.Connection, state: str, before_at: str) -> int:
    """Delete up to PRUNE_CHUNK deliveries finished (`delivered` or `dead`) before `before_at`,
    with their attempts; returns how many."""
    rows = await _rows(
        conn,
        "SELECT id FROM deliveries WHERE state = ? AND finished_at < ? LIMIT ?",
        (state, before_at, PRUNE_CHUNK),
    )
    ids = [row[0] for row in rows]
    if ids:
        await conn.execute(f"DELETE FROM attempts WHERE delivery_id IN ({_marks(ids)})", ids)
        await conn.execute(f"DELETE FROM deliveries WHERE id IN ({_marks(ids)})", ids)
    return len(ids)


async def oldest_needed_seq(conn: aiosqlite.Connection) -> int | None:
    """The lowest seq some delivery or routing position still needs (None: none does); the
    partial index deliveries_needed_seq answers it without a scan."""
    rows = await _rows(
        conn,
        "SELECT min(seq) FROM (SELECT min(seq) AS seq FROM deliveries"
        " WHERE state IN ('pending', 'in_flight', 'retrying', 'dead')"
        " UNION ALL SELECT min(routed_seq) + 1 FROM delivery_routing)",
    )
    value = rows[0][0] if rows else None
    return None if value is None else int(value)


async def prune_messages(conn: aiosqlite.Connection, below_seq: int, before_at: str) -> int:
    """Delete up to PRUNE_CHUNK messages older than `before_at` and below `below_seq`."""
    cursor = await conn.execute(
        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages"
        " WHERE seq < ? AND received_at < ? ORDER BY seq LIMIT ?)",
        (below_seq, before_at, PRUNE_CHUNK),
    )
    return int(cursor.rowcount)


async def prune_rejects(conn: aiosqlite.Connection, before_at: str) -> int:
    cursor = await conn.execute(
        "DELETE FROM rejects WHERE id IN (SELECT id FROM rejects WHERE received_at < ?"
        " ORDER BY id LIMIT ?)",
        (before_at, PRUNE_CHUNK),
    )
    return int(cursor.rowcount)


# -- replay --------------------------------------------------------------------------------------


async def replay_dead(conn: aiosqlite.Connection, destination: str, now_at: str) -> int:
    """Put up to REPLAY_CHUNK dead deliveries back to pending; the retry window starts again
    at their next attempt (attempt numbers carry on)."""
    cursor = await conn.execute(
        "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, first_attempt_at = NULL,"
        " finished_at = NULL WHERE id IN (SELECT id FROM deliveries"
        " WHERE destination = ? AND state = 'dead' LIMIT ?)",
        (now_at, destination, REPLAY_CHUNK),
    )
    return int(cursor.rowcount)


async def replay_range(
    conn: aiosqlite.Connection,
    rule: RoutingRule,
    seq_range: tuple[int, int],
    received_range: tuple[str, str],
    source: str | None,
    now_at: str,
) -> int:
    """Owe the destination again every eligible archived message received in the range
    (already delivered or dead ones included; unfinished ones are left as they are)."""
    condition, params = rule.where()
    if source is not None:
        condition += " AND source = ?"
        params.append(source)
    cursor = await conn.execute(
        "INSERT INTO deliveries (destination, seq, message_id, order_key, state, created_at,"
        " next_attempt_at)"
        f" SELECT ?, seq, message_id, {rule.order_key()}, 'pending', ?, ?"
        " FROM messages WHERE seq >= ? AND seq <= ? AND received_at >= ? AND received_at < ?"
        f" AND {condition}"
        " ON CONFLICT (destination, seq) DO UPDATE SET state = 'pending',"
        " next_attempt_at = excluded.next_attempt_at, first_attempt_at = NULL,"
        " finished_at = NULL WHERE state IN ('delivered', 'dead')",
        [rule.destination, now_at, now_at, *seq_range, *received_range, *params],
    )
    return int(cursor.rowcount)


async def seq_bounds(conn: aiosqlite.Connection, since_at: str, until_at: str) -> tuple[int, int]:
    """A seq range that holds every message received in [since_at, until_at).

    received_at grows with seq except across commits that overlapped by a few milliseconds (or
    a clock stepped back), so the range is found by bisection on seq and widened by an hour;
    callers still filter on received_at exactly."""
    rows = await _rows(conn, "SELECT min(seq), max(seq) FROM messages")
    low, high = rows[0] if rows else (None, None)
    if low is None or high is None:
        return (0, -1)
    margin = REPLAY_MARGIN_MINUTES
    start = await _first_seq_at_or_after(conn, low, high, _shift_minutes(since_at, -margin))
    end = await _first_seq_at_or_after(conn, low, high, _shift_minutes(until_at, +margin))
    return (start, end)


async def _first_seq_at_or_after(conn: aiosqlite.Connection, low: int, high: int, at: str) -> int:
    while low < high:
        middle = (low + high) // 2
        rows = await _rows(
            conn, "SELECT received_at FROM messages WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)
        )
        if rows and rows[0][0] < at:
            low = middle + 1
        else:
            high = middle
    return high


REPLAY_MARGIN_MINUTES = 60


LATEST_MS = parse_ms("9999-12-31T23:59:59.999Z")


def _shift_minutes(at: str, minutes: int) -> str:
    return format_ms(min(LATEST_MS, max(0, parse_ms(at) + minutes * 60_000)))


# -- what people ask -----------------------------------------------------------------------------


async def counts_by_state(conn: aiosqlite.Connection) -> dict[str, dict[str, int]]:
    rows = await _rows(
        conn, "SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state"
    )
    counts: dict[str, dict[str, int]] = {}
    for destination, state, count in rows:
        counts.setdefault(destination, dict.fromkeys(STATES, 0))[state] = count
    return counts


async def _rows(conn: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
    return list(await conn.execute_fetchall(sql, params))


def _integration_path(name: str) -> str:
    return '$.integrations."' + name.replace('"', '\\"') + '"'


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))
