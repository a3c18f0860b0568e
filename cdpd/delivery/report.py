"""Where deliveries stand, per destination: read-only queries for `cdpd deliveries`, the admin
endpoint and /metrics."""

from __future__ import annotations

from typing import Any

import aiosqlite
import msgspec

from cdpd.delivery import policy
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox import consumers

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
    sending: int = 0  # being attempted right now (admin only: the lane's live figure)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    errors_by_status: dict[str, int] = msgspec.field(default_factory=dict)
    last_error: LastError | None = None
    unhealthy: bool = False  # the latest attempt was refused with 401 or 403
    circuit: str = "closed"  # the lane's circuit breaker (admin only: closed, open, probing)
    backlog: int = 0  # messages its lane has not reached yet


class DeadDelivery(msgspec.Struct, frozen=True):
    id: int
    destination: str
    message_id: str
    attempts: int
    last_status: int | None
    last_error: str | None
    finished_at: str | None


_COUNT_UNFINISHED = (
    "SELECT destination, state, count(*) FROM deliveries"
    " WHERE state IN ('pending', 'in_flight', 'retrying', 'dead') GROUP BY destination, state"
)
_COUNT_ALL = "SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state"


async def destinations(
    conn: aiosqlite.Connection, names: list[str], at_ms: int | None = None
) -> list[DestinationReport]:
    """The full report for each configured destination (and any other the outbox still
    knows), history from the attempts table included: for `cdpd deliveries`."""
    reports = await states(conn, names, delivered=True)
    await history(conn, reports, now_ms() if at_ms is None else at_ms)
    return reports


async def states(
    conn: aiosqlite.Connection, names: list[str], *, delivered: bool
) -> list[DestinationReport]:
    """How many deliveries each destination has in each state. Unfinished and dead ones are
    few and indexed; `delivered` (up to the retention's worth) is counted only when asked."""
    reports = {name: DestinationReport(name) for name in names}
    sql = _COUNT_ALL if delivered else _COUNT_UNFINISHED
    for name, state, count in await _rows(conn, sql):
        setattr(reports.setdefault(name, DestinationReport(name)), state, count)
    for lag in await consumers.lags(conn):
        name = lag.name.removeprefix("delivery:")
        if lag.kind == "delivery" and name in reports and not lag.paused:
            reports[name].backlog = lag.messages_behind
    return list(reports.values())


async def history(conn: aiosqlite.Connection, reports: list[DestinationReport], at_ms: int) -> None:
    """Latency (last hour), errors by status (last 24 hours), the last error and health, from
    each destination's recent attempts (read through the attempts' (destination, time) index)."""
    latency_since = format_ms(at_ms - LATENCY_WINDOW_S * 1000)
    errors_since = format_ms(at_ms - ERROR_WINDOW_S * 1000)
    for entry in reports:
        name = entry.destination
        durations = [
            duration
            for (duration,) in await _rows(
                conn,
                "SELECT duration_ms FROM attempts WHERE destination = ? AND started_at >= ?"
                " ORDER BY 1",
                (name, latency_since),
            )
        ]
        entry.latency_p50_ms = percentile(durations, 0.50)
        entry.latency_p95_ms = percentile(durations, 0.95)
        for at, status, error, message_id, outcome in await _rows(
            conn,
            "SELECT started_at, status, error, message_id, outcome FROM attempts"
            " WHERE destination = ? AND started_at >= ? ORDER BY started_at",
            (name, errors_since),
        ):
            entry.unhealthy = policy.marks_unhealthy(status, error)  # the latest attempt decides
            if outcome != "delivered":
                key = str(status or "network")
                entry.errors_by_status[key] = entry.errors_by_status.get(key, 0) + 1
                entry.last_error = LastError(at, status, error, message_id)


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
