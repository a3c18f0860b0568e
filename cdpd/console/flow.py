"""Counts kept as messages flow, for the console's pages: per source, messages received (by
type), rejected and blocked (by reason); per destination, messages received, filtered at the
destination (by reason), delivered, retried and failed, and request latency buckets; all per
minute, in the outbox tables `flow_counts` and `flow_latency`.

The pages read these small aggregates and never scan `messages`. Source and filter counts come
from an outbox consumer (`console:flow`) reading each new range of seqs once, its position
moved in the same transaction as the counts; rejects and blocked messages are followed by id
(`flow_cursors`). Delivery outcomes are the lanes' own counters, sampled every second, and
request durations are observed as the lanes measure them; those figures of the last second
are lost if the process dies.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiosqlite

from cdpd.clock import Clock
from cdpd.config import Config
from cdpd.delivery.lane import Lane
from cdpd.delivery.service import routing_rule
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox import consumers
from cdpd.outbox.writer import OutboxWriter

CONSUMER = "console:flow"
FLUSH_INTERVAL_S = 1.0
MAX_SEQS_PER_STEP = 20_000
KEEP_DAYS = 8  # the longest window shown is 7 days
PRUNE_EVERY_S = 600.0
# Upper bounds of the latency buckets, in milliseconds; the last one holds everything above.
LATENCY_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 120_000)


Key = tuple[str, str, str, str, str]  # scope, name, minute, metric, reason


def _upsert_count(table: str, period: str) -> str:
    return (
        f"INSERT INTO {table} (scope, name, {period}, metric, reason, count)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT (scope, name, {period}, metric, reason)"
        " DO UPDATE SET count = count + excluded.count"
    )


def _upsert_latency(table: str, period: str) -> str:
    return (
        f"INSERT INTO {table} (destination, {period}, bucket_ms, count) VALUES (?, ?, ?, ?)"
        f" ON CONFLICT (destination, {period}, bucket_ms)"
        " DO UPDATE SET count = count + excluded.count"
    )


UPSERT_COUNT = _upsert_count("flow_counts", "minute")
UPSERT_COUNT_HOURLY = _upsert_count("flow_counts_hourly", "hour")
UPSERT_LATENCY = _upsert_latency("flow_latency", "minute")
UPSERT_LATENCY_HOURLY = _upsert_latency("flow_latency_hourly", "hour")


def minute_of(at: str) -> str:
    """`2026-01-02T03:04:05.678Z` -> `2026-01-02T03:04Z`."""
    return at[:16] + "Z"


def hour_of(at: str) -> str:
    """`2026-01-02T03:04:05.678Z` (or a minute) -> `2026-01-02T03Z`."""
    return at[:13] + "Z"


def current_minute() -> str:
    return minute_of(format_ms(now_ms()))


class Flow:
    """The service that keeps the counts (`run(stop)`, supervised), and the latency observer
    the lanes report to."""

    def __init__(self, config: Config, writer: OutboxWriter, clock: Clock) -> None:
        self._config = config
        self._writer = writer
        self._clock = clock
        self.lanes: dict[str, Lane] = {}  # delivery's lanes, once it has made them
        self._path = config.storage.outbox_path
        self._latency: Counter[tuple[str, str, int]] = Counter()
        self._lane_seen: dict[tuple[str, str], int] = {}
        self._carried: Counter[Key] = Counter()  # replaced lanes' last counts, not yet written
        self._filters = [_destination_filter(d) for d in config.destinations]
        self.consumer = consumers.Consumer(
            CONSUMER, "console", self._path, writer.transact, lambda: writer.last_seq
        )
        writer.on_messages(self.consumer.new_messages)

    def follow(self, config: Config, lanes: dict[str, Lane]) -> None:
        """Count for the destinations of `config` and these lanes (a reload replaces both, once
        the old lanes have stopped). What the old lanes did since the last step is carried into
        the next one; the new lanes' counters start at zero."""
        self._carried.update(self._sample_lanes())
        self._config = config
        self._filters = [_destination_filter(d) for d in config.destinations]
        self.lanes = lanes
        self._lane_seen = {
            (name, metric): 0 for name in lanes for metric in ("delivered", "retried", "failed")
        }

    def observer(self, destination: str) -> Callable[[float], None]:
        """Where a lane reports each request's duration, in seconds."""
        return functools.partial(self._observe, destination)

    def _observe(self, destination: str, duration_s: float) -> None:
        bucket = LATENCY_BOUNDS_MS[
            min(
                len(LATENCY_BOUNDS_MS) - 1, bisect.bisect_left(LATENCY_BOUNDS_MS, duration_s * 1000)
            )
        ]
        self._latency[destination, current_minute(), bucket] += 1

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.start(from_seq=self._writer.last_seq)
        reader = await consumers.open_reader(self._path)
        self._sample_lanes()  # a restart counts from the lanes' figures as they are now
        pruned_at = 0.0
        try:
            while True:
                await self.step(reader)
                while self.consumer.seq < self._writer.last_seq - MAX_SEQS_PER_STEP:
                    await self.step(reader)  # far behind (after a restart, say): catch up
                if time.monotonic() - pruned_at > PRUNE_EVERY_S:
                    await self._writer.transact(_prune)
                    pruned_at = time.monotonic()
                if await self._clock.wait(stop, FLUSH_INTERVAL_S):
                    await self.step(reader)  # what came in since, before stopping
                    return
        finally:
            await reader.close()
            await self.consumer.close()

    async def step(self, reader: aiosqlite.Connection) -> None:
        """Count what arrived since the last step and write it with the new position."""
        counts: Counter[Key] = Counter()
        after = self.consumer.seq
        to_seq = min(self._writer.last_seq, after + MAX_SEQS_PER_STEP)
        if to_seq > after:
            await self._count_messages(reader, after, to_seq, counts)
        cursors = await _count_followed(reader, counts)
        counts.update(self._sample_lanes())
        counts.update(self._carried)
        self._carried = Counter()
        latency, self._latency = self._latency, Counter()
        if to_seq <= after and not counts and not latency and not cursors:
            return
        effects = functools.partial(_write, counts, latency, cursors)
        await self.consumer.advance(max(to_seq, after), effects)

    async def _count_messages(
        self, reader: aiosqlite.Connection, after: int, to_seq: int, counts: Counter[Key]
    ) -> None:
        for minute, source, kind, count in await reader.execute_fetchall(
            "SELECT substr(received_at, 1, 16) || 'Z', source, type, count(*) FROM messages"
            " WHERE seq > ? AND seq <= ? GROUP BY 1, 2, 3",
            (after, to_seq),
        ):
            counts["source", source, minute, "received", kind] += count
        for name, sql, case_params, scope_params in self._filters:
            for minute, reason, count in await reader.execute_fetchall(
                sql, (*case_params, after, to_seq, *scope_params)
            ):
                counts["destination", name, minute, "received", ""] += count
                if reason:
                    counts["destination", name, minute, "filtered", reason] += count

    def _sample_lanes(self) -> Counter[Key]:
        """What each lane delivered, retried and gave up on since the last sample."""
        counts: Counter[Key] = Counter()
        minute = current_minute()
        for name, lane in self.lanes.items():
            stats = lane.stats
            for metric, value in (
                ("delivered", stats.delivered),
                ("retried", stats.retried),
                ("failed", stats.dead),
            ):
                seen = self._lane_seen.get((name, metric))
                self._lane_seen[name, metric] = value
                if seen is not None and value > seen:
                    counts["destination", name, minute, metric, ""] += value - seen
        return counts


def _destination_filter(destination: Any) -> tuple[str, str, list[Any], list[Any]]:
    """A query counting, per minute, the messages of the destination's sources in a seq range,
    with the first reason that filters each out ('' for none)."""
    rule = routing_rule(destination)
    cases, params, scope, scope_params = [], [], "1", []
    for reason, clause, values in rule.parts():
        if reason == "sources":
            scope, scope_params = clause, values
            continue
        cases.append(f"WHEN NOT ({clause}) THEN '{reason}'")
        params += values
    sql = (
        f"SELECT substr(received_at, 1, 16) || 'Z', CASE {' '.join(cases)} ELSE '' END, count(*)"
        f" FROM messages WHERE seq > ? AND seq <= ? AND {scope} GROUP BY 1, 2"
    )
    return destination.name, sql, params, scope_params


FOLLOWED = (
    # (cursor, table, metric): rows counted by source, minute and reason code, followed by id
    ("rejects", "rejects", "rejected"),
    ("blocked_messages", "blocked_messages", "blocked"),
)


async def _count_followed(
    reader: aiosqlite.Connection, counts: Counter[Key]
) -> list[tuple[str, int]]:
    """Count the new rows of `rejects` and `blocked_messages`; returns the cursors to store."""
    found: dict[str, int] = {
        name: last_id
        for name, last_id in await reader.execute_fetchall("SELECT name, last_id FROM flow_cursors")
    }
    cursors = []
    for cursor, table, metric in FOLLOWED:
        last_id = found.get(cursor)
        if last_id is None:  # the first run starts at the end, as the consumer does
            rows = await reader.execute_fetchall(f"SELECT coalesce(max(id), 0) FROM {table}")
            cursors.append((cursor, int(next(iter(rows))[0])))
            continue
        newest = last_id
        for top, minute, source, reason, count in await reader.execute_fetchall(
            f"SELECT max(id), substr(received_at, 1, 16) || 'Z', coalesce(source, ''),"
            f" reason_code, count(*) FROM (SELECT * FROM {table} WHERE id > ? ORDER BY id"
            " LIMIT ?) GROUP BY 2, 3, 4",
            (last_id, MAX_SEQS_PER_STEP),
        ):
            counts["source", source, minute, metric, reason] += count
            newest = max(newest, top)
        if newest != last_id:
            cursors.append((cursor, newest))
    return cursors


async def _write(
    counts: Counter[Key],
    latency: Counter[tuple[str, str, int]],
    cursors: list[tuple[str, int]],
    conn: aiosqlite.Connection,
) -> None:
    if counts:
        await conn.executemany(UPSERT_COUNT, [(*key, count) for key, count in counts.items()])
        hourly: Counter[Key] = Counter()
        for (scope, name, minute, metric, reason), count in counts.items():
            hourly[scope, name, hour_of(minute), metric, reason] += count
        await conn.executemany(
            UPSERT_COUNT_HOURLY, [(*key, count) for key, count in hourly.items()]
        )
    if latency:
        await conn.executemany(UPSERT_LATENCY, [(*key, count) for key, count in latency.items()])
        hourly_latency: Counter[tuple[str, str, int]] = Counter()
        for (destination, minute, bucket), count in latency.items():
            hourly_latency[destination, hour_of(minute), bucket] += count
        await conn.executemany(
            UPSERT_LATENCY_HOURLY, [(*key, count) for key, count in hourly_latency.items()]
        )
    if cursors:
        await conn.executemany(
            "INSERT INTO flow_cursors (name, last_id) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
            cursors,
        )


async def _prune(conn: aiosqlite.Connection) -> None:
    oldest = minute_of(format_ms(now_ms() - KEEP_DAYS * 24 * 3600 * 1000))
    await conn.execute("DELETE FROM flow_counts WHERE minute < ?", (oldest,))
    await conn.execute("DELETE FROM flow_latency WHERE minute < ?", (oldest,))
    await conn.execute("DELETE FROM flow_counts_hourly WHERE hour < ?", (hour_of(oldest),))
    await conn.execute("DELETE FROM flow_latency_hourly WHERE hour < ?", (hour_of(oldest),))
