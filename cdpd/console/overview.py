"""Reading the flow counts for a page: totals and series over a window, latency percentiles,
and the error groups of a destination with their samples. Every query reads the aggregates (per
minute for 10 min and 1 h, per hour for 24 h and 7 days) or the attempts ledger (failures
only) through a primary key or an index; none reads `messages` except by messageId, for the
three samples of an error. Table and column names in the SQL come from `Span`, never from a
request."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiosqlite

from cdpd.console.flow import LATENCY_BOUNDS_MS, hour_of, minute_of
from cdpd.delivery import report
from cdpd.model.timestamps import format_ms, now_ms

WINDOWS_S = {"10m": 600, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
DEFAULT_WINDOW = "24h"
# Points on a chart per window: minutes for the short ones, hours, then 4-hour steps.
BUCKET_S = {"10m": 60, "1h": 60, "24h": 3600, "7d": 4 * 3600}
HOURLY = {"24h", "7d"}  # read from the hourly tables: whole hours, the current one included
SAMPLES_PER_ERROR = 3
# The error table groups at most this many of the window's latest failed attempts, and the dead
# letters are counted up to DEAD_COUNTED: a destination failing for a week stays quick to show.
ERRORS_READ = 2000
DEAD_COUNTED = 1000
DEAD_SHOWN = 50


@dataclass(frozen=True)
class Span:
    """Where a window's counts are read: the per-minute or the per-hour tables, from `since`."""

    counts: str
    latency: str
    column: str
    since: str


def window(name: str | None) -> str:
    return name if name in WINDOWS_S else DEFAULT_WINDOW


def span(name: str, at_ms: int | None = None) -> Span:
    at_ms = now_ms() if at_ms is None else at_ms
    if name in HOURLY:
        start = format_ms(at_ms - WINDOWS_S[name] * 1000 + 3_600_000)
        return Span("flow_counts_hourly", "flow_latency_hourly", "hour", hour_of(start))
    start = format_ms(at_ms - WINDOWS_S[name] * 1000 + 60_000)
    return Span("flow_counts", "flow_latency", "minute", minute_of(start))


async def totals(
    conn: aiosqlite.Connection, scope: str, names: list[str], period: Span
) -> Counter[tuple[str, str]]:
    """(metric, reason) -> count for the names over the window."""
    found: Counter[tuple[str, str]] = Counter()
    for name in names:
        for metric, reason, count in await conn.execute_fetchall(
            f"SELECT metric, reason, sum(count) FROM {period.counts}"
            f" WHERE scope = ? AND name = ? AND {period.column} >= ? GROUP BY metric, reason",
            (scope, name, period.since),
        ):
            found[metric, reason] += count
    return found


async def series(
    conn: aiosqlite.Connection, scope: str, name: str, metrics: list[str], window_name: str
) -> dict[str, Any]:
    """Per-bucket counts for a chart: {"t": [epoch seconds], metric: [counts]}."""
    start_s = chart_start_s(window_name)
    period = span(window_name)
    marks = ",".join("?" * len(metrics))
    rows = await conn.execute_fetchall(
        f"SELECT {period.column}, metric, sum(count) FROM {period.counts}"
        f" WHERE scope = ? AND name = ? AND {period.column} >= ? AND metric IN ({marks})"
        f" GROUP BY {period.column}, metric",
        (scope, name, min(period.since, chart_key(period, start_s)), *metrics),
    )
    return chart(((str(at), str(m), int(c)) for at, m, c in rows), metrics, window_name)


def chart_start_s(window_name: str, at_ms: int | None = None) -> int:
    """The epoch second of a window's chart's first point."""
    bucket_s = BUCKET_S[window_name]
    end_s = (now_ms() if at_ms is None else at_ms) // 1000 // bucket_s * bucket_s
    return end_s - WINDOWS_S[window_name] // bucket_s * bucket_s + bucket_s


def chart(
    rows: Iterable[tuple[str, str, int]], metrics: list[str], window_name: str,
    at_ms: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The chart of (minute or hour, metric, count) rows: {"t": [epoch seconds], metric:
    [counts]}, a point per BUCKET_S of the window ending now."""
    bucket_s = BUCKET_S[window_name]
    start_s = chart_start_s(window_name, at_ms)
    times = list(range(start_s, start_s + WINDOWS_S[window_name], bucket_s))
    values = {metric: [0] * len(times) for metric in metrics}
    for at, metric, count in rows:
        index = (epoch_s(at) - start_s) // bucket_s
        if metric in values and 0 <= index < len(times):
            values[metric][index] += count
    return {"t": times, **values}


def by_count(totals: Counter[tuple[str, str]], metric: str) -> list[tuple[str, int]]:
    """The reasons of one metric with their counts, the most frequent first."""
    return sorted(((r, c) for (m, r), c in totals.items() if m == metric), key=lambda i: -i[1])


def chart_key(period: Span, at_s: int) -> str:
    """The minute or hour (as the period's tables key them) of an epoch second."""
    at = format_ms(at_s * 1000)
    return hour_of(at) if period.column == "hour" else minute_of(at)


def epoch_s(key: str) -> int:
    """A minute (`2026-01-02T03:04Z`) or an hour (`2026-01-02T03Z`) in epoch seconds."""
    text = key.rstrip("Z")
    if len(text) == 13:
        text += ":00"
    return int(datetime.fromisoformat(text + "+00:00").timestamp())


async def p95_ms(conn: aiosqlite.Connection, destination: str, period: Span) -> int | None:
    """The upper bound of the latency bucket holding the 95th percentile request."""
    rows = await conn.execute_fetchall(
        f"SELECT bucket_ms, sum(count) FROM {period.latency}"
        f" WHERE destination = ? AND {period.column} >= ? GROUP BY bucket_ms ORDER BY bucket_ms",
        (destination, period.since),
    )
    return p95_of((int(bucket), int(count)) for bucket, count in rows)


def p95_of(rows: Iterable[tuple[int, int]]) -> int | None:
    """The upper bound of the latency bucket holding the 95th percentile request, from
    (bucket upper bound, count) rows in ascending order of bucket."""
    rows = list(rows)
    total = sum(count for _, count in rows)
    if not total:
        return None
    seen = 0
    for bucket, count in rows:
        seen += count
        if seen >= 0.95 * total:
            return int(bucket)
    return LATENCY_BOUNDS_MS[-1]


@dataclass
class ErrorGroup:
    status: int | None
    error: str
    count: int
    last_at: str
    message_ids: list[str] = field(default_factory=list)


async def errors(
    conn: aiosqlite.Connection, destination: str, since_ms: int, limit: int = 10
) -> list[ErrorGroup]:
    """Failed attempts grouped by status and error text, most frequent first, with up to three
    message ids each (read through the attempts' (destination, started_at) index)."""
    groups = [
        ErrorGroup(status, error or "", count, last_at)
        for status, error, count, last_at in await conn.execute_fetchall(
            "SELECT status, error, count(*), max(started_at) FROM ("
            " SELECT status, error, started_at FROM attempts"
            " WHERE destination = ? AND started_at >= ? AND outcome != 'delivered'"
            " ORDER BY started_at DESC LIMIT ?)"
            " GROUP BY status, error ORDER BY 3 DESC LIMIT ?",
            (destination, format_ms(since_ms), ERRORS_READ, limit),
        )
    ]
    for group in groups:
        rows = await conn.execute_fetchall(
            "SELECT DISTINCT message_id FROM attempts WHERE destination = ? AND started_at >= ?"
            " AND outcome != 'delivered' AND status IS ? AND error IS ?"
            " ORDER BY started_at DESC LIMIT ?",
            (
                destination,
                format_ms(since_ms),
                group.status,
                group.error or None,
                SAMPLES_PER_ERROR,
            ),
        )
        group.message_ids = [message_id for (message_id,) in rows]
    return groups


async def payload(conn: aiosqlite.Connection, message_id: str, sources: list[str]) -> str | None:
    """A stored message by messageId, if it came from one of `sources`."""
    rows = await conn.execute_fetchall(
        "SELECT source, payload FROM messages WHERE message_id = ? ORDER BY seq DESC", (message_id,)
    )
    for source, text in rows:
        if source in sources:
            return str(text)
    return None


@dataclass
class Ledger:
    """A destination's exceptions as they stand: waiting retries, dead letters (the newest
    DEAD_SHOWN, counted up to DEAD_COUNTED), and how far its lane is behind the outbox."""

    pending_retry: int
    dead_count: int
    dead: list[report.DeadDelivery]
    behind: int


async def ledger(conn: aiosqlite.Connection, destination: str) -> Ledger:
    """Read through the ledger's (destination, ...) indexes; never counts `messages`."""
    pending = await _one(
        conn,
        "SELECT count(*) FROM deliveries"
        " WHERE destination = ? AND state IN ('pending', 'retrying')",
        (destination,),
    )
    dead_count = await _one(
        conn,
        "SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE destination = ? AND state = 'dead'"
        " LIMIT ?)",
        (destination, DEAD_COUNTED),
    )
    dead = [
        report.DeadDelivery(*row)
        for row in await conn.execute_fetchall(
            "SELECT id, destination, message_id, attempts, last_status, last_error, finished_at"
            " FROM deliveries WHERE destination = ? AND state = 'dead' ORDER BY seq DESC LIMIT ?",
            (destination, DEAD_SHOWN),
        )
    ]
    end = await _one(conn, "SELECT coalesce(max(seq), 0) FROM messages", ())
    position = await _one(
        conn,
        "SELECT coalesce(max(seq), 0) FROM consumers WHERE name = ?",
        (f"delivery:{destination}",),
    )
    return Ledger(pending, dead_count, dead, max(0, end - position))


async def _one(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> int:
    rows = await conn.execute_fetchall(sql, params)
    return int(next(iter(rows))[0])
