"""The delivery store: the seam delivery talks to, in messages and outcomes, not SQL.

`DeliveryStore` is what a backend implements; `SqliteDeliveryStore` keeps it in the outbox:

- each destination's lane is a consumer (`consumers`, named `delivery:NAME`) whose position
  passes every message it has finished: a message delivered on its first attempt leaves no row;
- `deliveries` is the ledger of exceptions: a message that failed (`retrying` with its next
  attempt, `dead` with its last error, `delivered` once a later attempt succeeds), one held back
  behind an earlier failure of the same user (`pending`, with `ordering = "user"`), or one put
  back by replay (`pending`). `attempts` holds the attempts of ledger rows;
- a replay of archived messages is a job in `replays` with a consumer of its own
  (`replay:ID`), read beside the live stream.

Writes go through the outbox writer (`transact`), reads through read-only connections.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite
import msgspec

from cdpd.model.rows import MessageView
from cdpd.model.timestamps import format_ms, parse_ms
from cdpd.outbox import consumers
from cdpd.outbox.consumers import Position, Progress

T = TypeVar("T")
Transact = Callable[[Callable[[aiosqlite.Connection], Awaitable[T]]], Awaitable[T]]

PENDING, RETRYING, DELIVERED, DEAD = "pending", "retrying", "delivered", "dead"
STATES = (PENDING, "in_flight", RETRYING, DELIVERED, DEAD)
UNFINISHED = (PENDING, RETRYING)
PRUNE_CHUNK = 1000
REPLAY_CHUNK = 10_000


def lane_consumer(destination: str) -> str:
    return f"delivery:{destination}"


def replay_consumer(job_id: int) -> str:
    return f"replay:{job_id}"


class RoutingRule(msgspec.Struct, frozen=True):
    """Which messages a destination is owed (config filters plus the `integrations` object)."""

    destination: str
    catalog_name: str
    subscription: tuple[str, list[Any]] = ("1", [])  # SQL: some action subscribes to it
    ordered: bool = False  # per-user ordering
    sources: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    events: tuple[str, ...] | None = None
    exclude_events: tuple[str, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        """A SQL condition on `messages` (and its parameters) true for eligible messages.

        `integrations` follows analytics.js: the value for the destination's configured name,
        else for its catalog name, else `All`, else true; only an explicit `false` disables
        (an object means enabled, with options)."""
        clauses, params = [], []
        for _, clause, values in self.parts():
            clauses.append(clause)
            params += values
        return " AND ".join(clauses), params

    def parts(self) -> list[tuple[str, str, list[Any]]]:
        """The conditions of `where`, each with what filters a message out when it is false:
        the integrations object, the subscriptions, the sources, the type and event filters
        (the console counts messages filtered at the destination by these reasons)."""
        parts: list[tuple[str, str, list[Any]]] = [
            (
                "integrations object",
                # Only a `false` can disable: a message without one anywhere needs no JSON.
                "(instr(payload, 'false') = 0 OR coalesce(payload ->> ?, payload ->> ?,"
                " payload ->> '$.integrations.All', 1) != 0)",
                [_integration_path(self.destination), _integration_path(self.catalog_name)],
            ),
            ("subscription", self.subscription[0], list(self.subscription[1])),
        ]
        if self.sources is not None:
            parts.append(("sources", f"source IN ({_marks(self.sources)})", list(self.sources)))
        if self.types is not None:
            parts.append(("filters", f"type IN ({_marks(self.types)})", list(self.types)))
        if self.events is not None:
            parts.append(
                (
                    "filters",
                    f"(type != 'track' OR event IN ({_marks(self.events)}))",
                    list(self.events),
                )
            )
        if self.exclude_events:
            parts.append(
                (
                    "filters",
                    f"(type != 'track' OR event NOT IN ({_marks(self.exclude_events)}))",
                    list(self.exclude_events),
                )
            )
        return parts


class Owed(msgspec.Struct, frozen=True, gc=False):
    """A message read for a lane: what it sends, and the user it is ordered by."""

    view: MessageView
    order_key: str | None
    from_ledger: bool = False
    received_at: str = ""  # new messages only: when a retry window would start
    has_row: bool = False  # a replayed message that has a ledger row (dead, say) to update


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """The result of one attempt at one message for one destination, as it is recorded."""

    seq: int
    message_id: str
    order_key: str | None
    attempt: int
    started_at: str
    duration_ms: float
    status: int | None
    error: str | None
    state: str  # delivered, retrying or dead
    first_attempt_at: str
    next_attempt_at: str
    finished_at: str | None
    origin: str  # stream (new messages), ledger (a retry) or replay (a replay job)


class Parked(msgspec.Struct, frozen=True, gc=False):
    """A message held back, unsent, behind an earlier unfinished one of the same user."""

    seq: int
    message_id: str
    order_key: str


class ReplayJob(msgspec.Struct, frozen=True):
    id: int
    destination: str
    first_seq: int
    last_seq: int
    since_at: str
    until_at: str
    source: str | None


class DeadDelivery(msgspec.Struct, frozen=True):
    destination: str
    seq: int
    message_id: str
    attempts: int
    last_status: int | None
    last_error: str | None
    finished_at: str | None


class AttemptRow(msgspec.Struct, frozen=True):
    attempt: int
    started_at: str
    duration_ms: float
    status: int | None
    error: str | None
    outcome: str


class DeliveryStatus(msgspec.Struct, frozen=True):
    """Where one message stands with one destination (`cdpd deliveries show`)."""

    destination: str
    seq: int
    message_id: str
    state: str  # delivered, pending, retrying, dead, not_reached, not_owed
    attempts: int = 0
    next_attempt_at: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    history: list[AttemptRow] = msgspec.field(default_factory=list)


class Recording(msgspec.Struct, frozen=True):
    """What a lane stores in one operation: outcomes, parked messages, and its consumers'
    progress (the lane's and any replay job's), so the position moves with its effects."""

    destination: str
    outcomes: Sequence[Outcome] = ()
    parked: Sequence[Parked] = ()
    progress: dict[str, tuple[int, list[tuple[int, int]]]] = msgspec.field(default_factory=dict)
    finished_jobs: Sequence[int] = ()
    at: str = ""


class LaneReader(Protocol):
    """A lane's read side: new messages past a position, due ledger rows, replay jobs.

    A backend whose consumer keeps the position itself (JetStream: a durable consumer shared
    by every node) hands out its next messages from `new_messages` (the bounds only filter),
    and from `due` the messages it handed back after their delay, as the last read found them;
    what a lane reads it settles through `DeliveryStore.record`."""

    async def new_messages(self, after_seq: int, up_to_seq: int, limit: int) -> list[Owed]: ...

    async def due(self, now_at: str, limit: int) -> list[Owed]: ...

    async def next_due_at(self) -> str | None: ...

    async def unfinished_keys(self) -> Counter[str]: ...

    async def replay_jobs(self) -> list[ReplayJob]: ...

    async def replay_messages(self, job: ReplayJob, after_seq: int, limit: int) -> list[Owed]: ...

    async def positions(self) -> dict[str, Position]: ...

    async def close(self) -> None: ...


class DeliveryStore(Protocol):
    """What delivery needs of its storage; the SQLite outbox is one backend, the JetStream
    cluster the other (cdpd/cluster/store.py)."""

    async def start(
        self, enabled: Sequence[str], disabled: Sequence[str], end_seq: int, at: str
    ) -> dict[str, Position]: ...

    async def reader(self, rule: RoutingRule) -> LaneReader: ...

    async def record(self, recording: Recording) -> None: ...

    async def expire(self, destination: str, rule: RoutingRule, before_at: str, at: str) -> int: ...

    async def retry_now(self, destination: str, at: str) -> int: ...

    async def replay_dead(self, destination: str, at: str) -> int: ...

    async def replay_range(
        self, rule: RoutingRule, since_at: str, until_at: str, source: str | None, at: str
    ) -> tuple[int, int]: ...

    async def counts(self) -> dict[str, dict[str, int]]: ...

    async def dead(self, destination: str | None, limit: int) -> list[DeadDelivery]: ...

    async def show(self, message_id: str, rules: Sequence[RoutingRule]) -> list[DeliveryStatus]: ...


# -- SQL -------------------------------------------------------------------------------------

NEW_MESSAGES = """
SELECT seq, message_id, payload, {key}, received_at, source FROM messages
WHERE seq > ? AND seq <= ? AND {condition}
ORDER BY seq LIMIT ?
"""
ORDER_KEY = "coalesce(user_id, anonymous_id)"
DUE = """
SELECT d.seq, d.message_id, m.payload, d.attempts, d.first_attempt_at, d.order_key, m.source
FROM deliveries AS d JOIN messages AS m ON m.seq = d.seq
WHERE d.destination = ? AND d.state IN ('pending', 'retrying') AND d.next_attempt_at <= ?
{ordered}
ORDER BY d.next_attempt_at, d.seq
LIMIT ?
"""
# Only the oldest unfinished message of each user may go out.
OLDEST_OF_USER = """
AND (d.order_key IS NULL OR NOT EXISTS (
    SELECT 1 FROM deliveries AS e
    WHERE e.destination = d.destination AND e.order_key = d.order_key AND e.seq < d.seq
      AND e.state IN ('pending', 'retrying') AND e.order_key IS NOT NULL
))
"""
RECORD_FAILURE = """
INSERT INTO deliveries (destination, seq, message_id, order_key, state, attempts, created_at,
    next_attempt_at, first_attempt_at, last_attempt_at, last_status, last_error, finished_at)
SELECT ?1, ?2, ?3, ?4, ?9, ?5, ?6, ?12, ?11, ?6, ?7, ?8, ?13
WHERE EXISTS (SELECT 1 FROM messages WHERE seq = ?2)
ON CONFLICT (destination, seq) DO UPDATE SET state = ?9, attempts = ?5, next_attempt_at = ?12,
    first_attempt_at = ?11, last_attempt_at = ?6, last_status = ?7, last_error = ?8,
    finished_at = ?13
"""
RECORD_REPLAYED = """
UPDATE deliveries SET state = ?9, attempts = attempts + 1, last_attempt_at = ?6,
    last_status = ?7, last_error = ?8, finished_at = ?13
WHERE destination = ?1 AND seq = ?2 AND (?3 IS NOT NULL OR ?4 IS NULL OR ?5 OR ?10 OR ?11 OR ?12)
"""
# A message deleted meanwhile (a regulation) gets no ledger row, and so no attempt row.
# ?10 is the attempt's duration; the parameters are one tuple for both statements. A message
# given up unsent (attempt 0) has no attempt to record.
RECORD_ATTEMPT = """
INSERT INTO attempts (delivery_id, destination, message_id, attempt, started_at, duration_ms,
    status, error, outcome)
SELECT id, ?1, ?3, ?5, ?6, ?10, ?7, ?8, ?9 FROM deliveries WHERE destination = ?1 AND seq = ?2
    AND ?5 > 0 AND (?13 IS NULL OR ?13 IS NOT NULL)
"""
PARK = """
INSERT INTO deliveries (destination, seq, message_id, order_key, state, created_at,
    next_attempt_at)
SELECT ?1, ?2, ?3, ?4, 'pending', ?5, ?6 WHERE EXISTS (SELECT 1 FROM messages WHERE seq = ?2)
ON CONFLICT (destination, seq) DO NOTHING
"""


class SqliteDeliveryStore:
    """DeliveryStore on the SQLite outbox: writes through `transact` (the daemon's writer, or
    the CLI's own connection), reads through read-only connections on `path`."""

    def __init__(
        self,
        transact: Transact[Any],
        path: Path,
        execute: Callable[[str, Sequence[object]], Awaitable[None]] | None = None,
    ) -> None:
        self._transact = transact
        self._path = path
        self._execute = execute  # one statement, when the writer has a cheaper way for it

    # -- start-up ---------------------------------------------------------------------------

    async def start(
        self, enabled: Sequence[str], disabled: Sequence[str], end_seq: int, at: str
    ) -> dict[str, Position]:
        """Destinations seen for the first time (or enabled again) start at the outbox's end;
        the consumers of destinations no longer configured are forgotten and their unfinished
        ledger rows become dead, as are a disabled destination's (replay them later)."""

        async def start(conn: aiosqlite.Connection) -> dict[str, Position]:
            known = await consumers.positions(conn)
            for name in enabled:
                position = known.get(lane_consumer(name))
                if position is None or position.paused:
                    await consumers.put(
                        conn, Position(lane_consumer(name), "delivery", end_seq, [], False, at)
                    )
            for name in disabled:
                await consumers.put(
                    conn, Position(lane_consumer(name), "delivery", end_seq, [], True, at)
                )
            configured = {lane_consumer(n) for n in [*enabled, *disabled]}
            gone = [p.name for p in known.values() if p.kind == "delivery"]
            await consumers.forget(conn, [name for name in gone if name not in configured])
            await _give_up(conn, enabled, disabled, at)
            return await consumers.positions(conn)

        result: dict[str, Position] = await self._transact(start)
        return result

    async def reader(self, rule: RoutingRule) -> SqliteLaneReader:
        return SqliteLaneReader(await consumers.open_reader(self._path), rule)

    # -- a lane's writes --------------------------------------------------------------------

    async def record(self, recording: Recording) -> None:
        if (
            self._execute is not None
            and len(recording.progress) == 1
            and not (recording.outcomes or recording.parked or recording.finished_jobs)
        ):  # the common recording: only the lane's position moves
            ((name, (seq, done)),) = recording.progress.items()
            await self._execute(
                consumers.SAVE_PROGRESS,
                (seq, _encoder.encode(done).decode(), recording.at, name),
            )
            return

        async def record(conn: aiosqlite.Connection) -> None:
            await _record(conn, recording)

        await self._transact(record)

    async def expire(self, destination: str, rule: RoutingRule, before_at: str, at: str) -> int:
        """Give up (dead) the ledger rows first tried before `before_at`: the destination has
        been unreachable for their whole retry window."""

        async def expire(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "UPDATE deliveries SET state = 'dead', finished_at = ?, last_error ="
                " coalesce(last_error, 'unsent') || ' (the destination stayed unreachable for the"
                " whole retry window)' WHERE destination = ? AND state IN ('pending', 'retrying')"
                " AND coalesce(first_attempt_at, created_at) < ?",
                (at, destination, before_at),
            )
            return int(cursor.rowcount)

        count: int = await self._transact(expire)
        return count

    async def retry_now(self, destination: str, at: str) -> int:
        """Make every waiting ledger row of the destination due now."""

        async def retry(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "UPDATE deliveries SET next_attempt_at = min(next_attempt_at, ?)"
                " WHERE destination = ? AND state IN ('pending', 'retrying')",
                (at, destination),
            )
            return int(cursor.rowcount)

        count: int = await self._transact(retry)
        return count

    # -- replay -----------------------------------------------------------------------------

    async def replay_dead(self, destination: str, at: str) -> int:
        """Dead ledger rows back to pending, in chunks; the retry window starts again at their
        next attempt (attempt numbers carry on)."""
        total = 0
        while True:

            async def chunk(conn: aiosqlite.Connection) -> int:
                cursor = await conn.execute(
                    "UPDATE deliveries SET state = 'pending', next_attempt_at = ?,"
                    " first_attempt_at = NULL, finished_at = NULL WHERE id IN (SELECT id FROM"
                    " deliveries WHERE destination = ? AND state = 'dead' LIMIT ?)",
                    (at, destination, REPLAY_CHUNK),
                )
                return int(cursor.rowcount)

            count: int = await self._transact(chunk)
            total += count
            if count < REPLAY_CHUNK:
                return total

    async def replay_range(
        self, rule: RoutingRule, since_at: str, until_at: str, source: str | None, at: str
    ) -> tuple[int, int]:
        """A replay job for the eligible messages received in [since_at, until_at) that the
        destination's lane has already passed (the lane sends the rest itself); returns the
        job's id and how many messages it will send."""

        async def create(conn: aiosqlite.Connection) -> tuple[int, int]:
            first, last = await seq_bounds(conn, since_at, until_at)
            lane = (await consumers.positions(conn)).get(lane_consumer(rule.destination))
            if lane is not None:
                last = min(last, lane.seq)
            cursor = await conn.execute(
                "INSERT INTO replays (destination, first_seq, last_seq, since_at, until_at,"
                " source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rule.destination, first, last, since_at, until_at, source, at),
            )
            job_id = int(cursor.lastrowid or 0)
            await consumers.put(
                conn, Position(replay_consumer(job_id), "replay", first - 1, [], False, at)
            )
            job = ReplayJob(job_id, rule.destination, first, last, since_at, until_at, source)
            condition, params = _replay_condition(rule, job)
            rows: Any = await conn.execute_fetchall(
                f"SELECT count(*) FROM messages WHERE seq >= ? AND seq <= ? AND {condition}",
                [first, last, *params],
            )
            return job_id, int(next(iter(rows))[0])

        result: tuple[int, int] = await self._transact(create)
        return result

    # -- what people ask --------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        async with _reading(self._path) as conn:
            rows = await conn.execute_fetchall(
                "SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state"
            )
        found: dict[str, dict[str, int]] = {}
        for destination, state, count in rows:
            found.setdefault(destination, dict.fromkeys(STATES, 0))[state] = count
        return found

    async def dead(self, destination: str | None, limit: int) -> list[DeadDelivery]:
        async with _reading(self._path) as conn:
            rows = await conn.execute_fetchall(
                "SELECT destination, seq, message_id, attempts, last_status, last_error,"
                " finished_at FROM deliveries WHERE state = 'dead'"
                " AND (? IS NULL OR destination = ?) ORDER BY finished_at DESC, id DESC LIMIT ?",
                (destination, destination, limit),
            )
        return [DeadDelivery(*row) for row in rows]

    async def show(self, message_id: str, rules: Sequence[RoutingRule]) -> list[DeliveryStatus]:
        async with _reading(self._path) as conn:
            return await _show(conn, message_id, rules)

    async def statuses(self, rule: RoutingRule, limit: int = 10_000) -> list[DeliveryStatus]:
        """Where each of the destination's messages stands (the oldest `limit` in the outbox
        it is owed or has a ledger row for), in seq order."""
        async with _reading(self._path) as conn:
            condition, params = rule.where()
            rows = await conn.execute_fetchall(
                f"SELECT message_id FROM messages WHERE ({condition}) OR seq IN (SELECT seq FROM"
                " deliveries WHERE destination = ?) ORDER BY seq LIMIT ?",
                [*params, rule.destination, limit],
            )
            found: list[DeliveryStatus] = []
            for message_id in dict.fromkeys(row[0] for row in rows):
                found += [s for s in await _show(conn, message_id, [rule]) if s.state != "not_owed"]
        return sorted(found, key=lambda s: s.seq)


class SqliteLaneReader:
    def __init__(self, conn: aiosqlite.Connection, rule: RoutingRule) -> None:
        self._conn = conn
        self._rule = rule
        condition, self._params = rule.where()
        key = ORDER_KEY if rule.ordered else "NULL"
        self._new_sql = NEW_MESSAGES.format(key=key, condition=condition)
        self._due_sql = DUE.format(ordered=OLDEST_OF_USER if rule.ordered else "")

    async def new_messages(self, after_seq: int, up_to_seq: int, limit: int) -> list[Owed]:
        rows = await self._conn.execute_fetchall(
            self._new_sql, [after_seq, up_to_seq, *self._params, limit]
        )
        return [
            Owed(MessageView(seq, mid, payload, source=source), key, received_at=at)
            for seq, mid, payload, key, at, source in rows
        ]

    async def due(self, now_at: str, limit: int) -> list[Owed]:
        rows = await self._conn.execute_fetchall(
            self._due_sql, (self._rule.destination, now_at, limit)
        )
        return [
            Owed(MessageView(seq, mid, payload, attempts, first_at, source), key, from_ledger=True)
            for seq, mid, payload, attempts, first_at, key, source in rows
        ]

    async def next_due_at(self) -> str | None:
        rows: Any = await self._conn.execute_fetchall(
            "SELECT min(d.next_attempt_at) FROM deliveries AS d"
            " WHERE d.destination = ? AND d.state IN ('pending', 'retrying')"
            + (OLDEST_OF_USER if self._rule.ordered else ""),
            (self._rule.destination,),
        )
        value = next(iter(rows))[0] if rows else None
        return None if value is None else str(value)

    async def unfinished_keys(self) -> Counter[str]:
        rows = await self._conn.execute_fetchall(
            "SELECT order_key, count(*) FROM deliveries WHERE destination = ?"
            " AND state IN ('pending', 'retrying') AND order_key IS NOT NULL GROUP BY order_key",
            (self._rule.destination,),
        )
        return Counter({key: count for key, count in rows})

    async def replay_jobs(self) -> list[ReplayJob]:
        rows = await self._conn.execute_fetchall(
            "SELECT id, destination, first_seq, last_seq, since_at, until_at, source FROM replays"
            " WHERE destination = ? AND finished_at IS NULL ORDER BY id",
            (self._rule.destination,),
        )
        return [ReplayJob(*row) for row in rows]

    async def replay_messages(self, job: ReplayJob, after_seq: int, limit: int) -> list[Owed]:
        condition, params = _replay_condition(self._rule, job)
        key = ORDER_KEY if self._rule.ordered else "NULL"
        rows = await self._conn.execute_fetchall(
            f"SELECT seq, message_id, payload, {key}, received_at, source, EXISTS (SELECT 1 FROM"
            " deliveries AS d WHERE d.destination = ? AND d.seq = messages.seq) FROM messages"
            f" WHERE seq > ? AND seq <= ? AND {condition} ORDER BY seq LIMIT ?",
            [self._rule.destination, after_seq, job.last_seq, *params, limit],
        )
        return [
            Owed(
                MessageView(seq, mid, payload, source=source),
                key,
                received_at=at,
                has_row=bool(row),
            )
            for seq, mid, payload, key, at, source, row in rows
        ]

    async def positions(self) -> dict[str, Position]:
        return await consumers.positions(self._conn)

    async def close(self) -> None:
        await self._conn.close()


def _replay_condition(rule: RoutingRule, job: ReplayJob) -> tuple[str, list[Any]]:
    """Eligible, received in the job's window, from its source, and not waiting in the ledger
    already (those are sent by the lane's retries)."""
    condition, params = rule.where()
    condition += (
        " AND received_at >= ? AND received_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries"
        " AS d WHERE d.destination = ? AND d.seq = messages.seq"
        " AND d.state IN ('pending', 'retrying'))"
    )
    params += [job.since_at, job.until_at, rule.destination]
    if job.source is not None:
        condition += " AND source = ?"
        params.append(job.source)
    return condition, params


async def _record(conn: aiosqlite.Connection, recording: Recording) -> None:
    destination = recording.destination
    upserts: list[tuple[object, ...]] = []
    updates: list[tuple[object, ...]] = []
    for o in recording.outcomes:
        if o.state == DELIVERED and o.origin == "stream":
            continue  # delivered on its first attempt: the position says it all
        row = (
            destination, o.seq, o.message_id, o.order_key, o.attempt, o.started_at, o.status,
            o.error, o.state, o.duration_ms, o.first_attempt_at, o.next_attempt_at, o.finished_at,
        )  # fmt: skip
        # A replayed message delivered changes a row it has (dead, say) but makes none.
        (updates if o.state == DELIVERED and o.origin == "replay" else upserts).append(row)
    if upserts:
        await conn.executemany(RECORD_FAILURE, upserts)
    if updates:
        await conn.executemany(RECORD_REPLAYED, updates)
    if upserts or updates:
        await conn.executemany(RECORD_ATTEMPT, upserts + updates)
    if recording.parked:
        await conn.executemany(
            PARK,
            [
                (destination, p.seq, p.message_id, p.order_key, recording.at, recording.at)
                for p in recording.parked
            ],
        )
    for name, (seq, done) in recording.progress.items():
        await consumers.save(conn, name, Progress(seq, done), recording.at)
    for job_id in recording.finished_jobs:
        await conn.execute(
            "UPDATE replays SET finished_at = ? WHERE id = ?", (recording.at, job_id)
        )
        await consumers.forget(conn, [replay_consumer(job_id)])


async def _give_up(
    conn: aiosqlite.Connection, enabled: Sequence[str], disabled: Sequence[str], at: str
) -> None:
    configured = [*enabled, *disabled]
    others = f"destination NOT IN ({_marks(configured)})" if configured else "1"
    for why, condition, params in (
        ("the destination is no longer configured", others, configured),
        ("the destination is disabled", f"destination IN ({_marks(disabled)})", list(disabled)),
    ):
        if params or why.endswith("configured"):
            await conn.execute(
                "UPDATE deliveries SET state = 'dead', finished_at = ?, last_error = ?"
                f" WHERE state IN ('pending', 'retrying', 'in_flight') AND {condition}",
                [at, why, *params],
            )
    # Replay jobs of destinations no longer configured, or disabled, end too.
    await conn.execute(
        f"UPDATE replays SET finished_at = ? WHERE finished_at IS NULL AND ({others}"
        f" OR destination IN ({_marks(disabled)}))",
        [at, *configured, *disabled],
    )
    await conn.execute(
        "DELETE FROM consumers WHERE kind = 'replay' AND substr(name, 8) IN"
        " (SELECT CAST(id AS TEXT) FROM replays WHERE finished_at IS NOT NULL)"
    )


async def _show(
    conn: aiosqlite.Connection, message_id: str, rules: Sequence[RoutingRule]
) -> list[DeliveryStatus]:
    messages = list(
        await conn.execute_fetchall(
            "SELECT seq FROM messages WHERE message_id = ? ORDER BY seq", (message_id,)
        )
    )
    ledger = {
        (row[0], row[1]): row
        for row in await conn.execute_fetchall(
            "SELECT destination, seq, id, state, attempts, next_attempt_at, last_status,"
            " last_error FROM deliveries WHERE message_id = ?",
            (message_id,),
        )
    }
    known = await consumers.positions(conn)
    found = []
    for rule in rules:
        for (seq,) in messages:
            row = ledger.get((rule.destination, seq))
            if row is not None:
                _, _, delivery_id, state, attempts, next_at, status, error = row
                history = [
                    AttemptRow(*a)
                    for a in await conn.execute_fetchall(
                        "SELECT attempt, started_at, duration_ms, status, error, outcome"
                        " FROM attempts WHERE delivery_id = ? ORDER BY id",
                        (delivery_id,),
                    )
                ]
                found.append(
                    DeliveryStatus(
                        rule.destination,
                        seq,
                        message_id,
                        state,
                        attempts,
                        next_at if state in UNFINISHED else None,
                        status,
                        error,
                        history,
                    )
                )
                continue
            condition, params = rule.where()
            owed = await conn.execute_fetchall(
                f"SELECT 1 FROM messages WHERE seq = ? AND {condition}", [seq, *params]
            )
            position = known.get(lane_consumer(rule.destination))
            passed = position is not None and Progress(position.seq, position.done_ranges).is_done(
                seq
            )
            if not list(owed):
                found.append(DeliveryStatus(rule.destination, seq, message_id, "not_owed"))
            elif passed:  # passed without a ledger row: delivered on its first attempt
                found.append(DeliveryStatus(rule.destination, seq, message_id, DELIVERED, 1))
            else:
                found.append(DeliveryStatus(rule.destination, seq, message_id, "not_reached"))
    return found


async def seq_bounds(conn: aiosqlite.Connection, since_at: str, until_at: str) -> tuple[int, int]:
    """A seq range that holds every message received in [since_at, until_at).

    received_at grows with seq except across commits that overlapped by a few milliseconds (or
    a clock stepped back), so the range is found by bisection on seq and widened by an hour;
    callers still filter on received_at exactly."""
    rows: Any = await conn.execute_fetchall("SELECT min(seq), max(seq) FROM messages")
    low, high = next(iter(rows)) if rows else (None, None)
    if low is None or high is None:
        return (1, 0)
    start = await _first_seq_at_or_after(conn, low, high, _shift_minutes(since_at, -MARGIN_MIN))
    end = await _first_seq_at_or_after(conn, low, high, _shift_minutes(until_at, +MARGIN_MIN))
    return (start, end)


MARGIN_MIN = 60


async def _first_seq_at_or_after(conn: aiosqlite.Connection, low: int, high: int, at: str) -> int:
    while low < high:
        middle = (low + high) // 2
        rows = list(
            await conn.execute_fetchall(
                "SELECT received_at FROM messages WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)
            )
        )
        if rows and rows[0][0] < at:
            low = middle + 1
        else:
            high = middle
    return high


LATEST_MS = parse_ms("9999-12-31T23:59:59.999Z")


def _shift_minutes(at: str, minutes: int) -> str:
    return format_ms(min(LATEST_MS, max(0, parse_ms(at) + minutes * 60_000)))


class _reading:
    """A short-lived read-only connection."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: aiosqlite.Connection | None = None

    async def __aenter__(self) -> aiosqlite.Connection:
        self._conn = await consumers.open_reader(self._path)
        return self._conn

    async def __aexit__(self, *_: object) -> None:
        if self._conn is not None:
            await self._conn.close()


_encoder = msgspec.json.Encoder()


def _integration_path(name: str) -> str:
    return '$.integrations."' + name.replace('"', '\\"') + '"'


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))
