"""Where deliveries stand, per destination: read-only queries for `cdpd deliveries`, the admin
endpoint and /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiosqlite
import msgspec

from cdpd.delivery import policy
from cdpd.delivery.store import STATES
from cdpd.model.timestamps import format_ms, now_ms

LATENCY_WINDOW_S = 3600
ERROR_WINDOW_S = 24 * 3600


class LastError(msgspec.Struct, frozen=True):
    at: str
    status: int | None
    error: str | None
    message_id: str


class DestinationReport(msgspec.Struct):
    destination: str
    delivered: int = 0  # still within delivered_retention_s
    pending: int = 0
    in_flight: int = 0
    retrying: int = 0
    dead: int = 0
    latency_p50_ms: float | None = None  # attempts of the last hour
    latency_p95_ms: float | None = None
    errors_by_status: dict[str, int] = msgspec.field(default_factory=dict)  # last 24 hours
    last_error: LastError | None = None
    unhealthy: bool = False  # the latest attempt was refused with 401 or 403


class DeadDelivery(msgspec.Struct, frozen=True):
    id: int
    destination: str
    message_id: str
    attempts: int
    last_status: int | None
    last_error: str | None
    finished_at: str | None


async def destinations(
    conn: aiosqlite.Connection, names: list[str], at_ms: int | None = None
) -> list[DestinationReport]:
    """A report for each configured destination (and any other the outbox still knows)."""
    at_ms = now_ms() if at_ms is None else at_ms
    reports = {name: DestinationReport(name) for name in names}

    def report(name: str) -> DestinationReport:
        return reports.setdefault(name, DestinationReport(name))

    for name, state, count in await _rows(
        conn, "SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state"
    ):
        if state in STATES:
            setattr(report(name), state, count)
    await _latencies(conn, report, format_ms(at_ms - LATENCY_WINDOW_S * 1000))
    for name, status, count in await _rows(
        conn,
        "SELECT destination, coalesce(status, 'network'), count(*) FROM attempts"
        " WHERE started_at >= ? AND outcome != 'delivered' GROUP BY 1, 2",
        (format_ms(at_ms - ERROR_WINDOW_S * 1000),),
    ):
        report(name).errors_by_status[str(status)] = count
    for name, at, status, error, message_id in await _rows(
        conn,
        "SELECT destination, started_at, status, error, message_id FROM attempts WHERE id IN"
        " (SELECT max(id) FROM attempts WHERE outcome != 'delivered' GROUP BY destination)",
    ):
        report(name).last_error = LastError(at, status, error, message_id)
    for name, status in await _rows(
        conn,
        "SELECT destination, status FROM attempts"
        " WHERE id IN (SELECT max(id) FROM attempts GROUP BY destination)",
    ):
        report(name).unhealthy = policy.marks_unhealthy(status)
    return list(reports.values())


async def _latencies(
    conn: aiosqlite.Connection, report: Callable[[str], DestinationReport], since_at: str
) -> None:
    durations: dict[str, list[float]] = {}
    for name, duration in await _rows(
        conn,
        "SELECT destination, duration_ms FROM attempts WHERE started_at >= ? ORDER BY 1, 2",
        (since_at,),
    ):
        durations.setdefault(name, []).append(duration)
    for name, values in durations.items():
        entry = report(name)
        entry.latency_p50_ms = percentile(values, 0.50)
        entry.latency_p95_ms = percentile(values, 0.95)


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def dead(
    conn: aiosqlite.Connection, destination: str | None, limit: int
) -> list[DeadDelivery]:
    rows = await _rows(
        conn,
        "SELECT id, destination, message_id, attempts, last_status, last_error, finished_at"
        " FROM deliveries WHERE state = 'dead' AND (? IS NULL OR destination = ?)"
        " ORDER BY finished_at DESC, id DESC LIMIT ?",
        (destination, destination, limit),
    )
    return [DeadDelivery(*row) for row in rows]


async def _rows(conn: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
    return list(await conn.execute_fetchall(sql, params))
