"""Governance's tables in the outbox: the migration that creates them, the rows ingest appends
to them, and the queries `cdpd violations`, `cdpd schema` and the admin endpoint run.
README.md ("Tracking plans") documents the tables.
"""

from __future__ import annotations

from typing import Any

import aiosqlite
import msgspec

from cdpd.governance.chain import Block, Findings, Message

# Appended to the outbox's MIGRATIONS; self-contained, so its number may change at a merge.
# A message sent again (a client's retry) adds no second violation or blocked row.
MIGRATION = """
CREATE TABLE violations (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at    TEXT NOT NULL,
    source         TEXT NOT NULL,
    tracking_plan  TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    type           TEXT NOT NULL,
    event          TEXT,
    violation_type TEXT NOT NULL,
    field          TEXT NOT NULL,
    description    TEXT NOT NULL,
    blocked        INTEGER NOT NULL
);
CREATE INDEX violations_received ON violations (received_at);
CREATE UNIQUE INDEX violations_once ON violations (message_id, field, violation_type, description);
CREATE TABLE blocked_messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    source      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    event       TEXT,
    reason_code TEXT NOT NULL,
    reason      TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX blocked_messages_received ON blocked_messages (received_at);
CREATE UNIQUE INDEX blocked_messages_once ON blocked_messages (message_id, source);
CREATE TABLE schema_fields (
    source     TEXT NOT NULL,
    type       TEXT NOT NULL,
    event      TEXT NOT NULL,
    field      TEXT NOT NULL,
    value_type TEXT NOT NULL,
    count      INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    PRIMARY KEY (source, type, event, field, value_type)
) WITHOUT ROWID;
"""

INSERT_VIOLATION = """
INSERT OR IGNORE INTO violations (received_at, source, tracking_plan, message_id, type, event,
                                  violation_type, field, description, blocked)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
INSERT_BLOCKED = """
INSERT OR IGNORE INTO blocked_messages (received_at, source, message_id, type, event,
                                        reason_code, reason, payload)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
UPSERT_SCHEMA = """
INSERT INTO schema_fields (source, type, event, field, value_type, count, first_seen, last_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (source, type, event, field, value_type) DO UPDATE
SET count = count + excluded.count, last_seen = max(last_seen, excluded.last_seen)
"""
RETENTION_S = 30 * 24 * 3600  # blocked messages and violations, as Segment keeps them
PRUNE = {
    "blocked_messages": "DELETE FROM blocked_messages WHERE id IN"
    " (SELECT id FROM blocked_messages WHERE received_at < ? ORDER BY id LIMIT ?)",
    "violations": "DELETE FROM violations WHERE id IN"
    " (SELECT id FROM violations WHERE received_at < ? ORDER BY id LIMIT ?)",
}

astuple = msgspec.structs.astuple


def blocked_row(message: Message, verdict: Block) -> tuple[object, ...]:
    row = message.row
    return (
        row.received_at,
        row.source,
        row.message_id,
        row.type,
        row.event,
        verdict.code,
        verdict.reason,
        message.payload(),
    )


def extra_rows(
    findings: Findings, blocked: list[tuple[object, ...]]
) -> list[tuple[str, list[tuple[object, ...]]]]:
    """The statements and rows for the writer to run in the messages' transaction."""
    extra: list[tuple[str, list[tuple[object, ...]]]] = []
    if findings.violations:
        extra.append((INSERT_VIOLATION, [astuple(v) for v in findings.violations]))
    if blocked:
        extra.append((INSERT_BLOCKED, blocked))
    return extra


async def upsert_schema(rows: list[tuple[object, ...]], conn: aiosqlite.Connection) -> int:
    await conn.executemany(UPSERT_SCHEMA, rows)
    return len(rows)


# -- reading -----------------------------------------------------------------------------------


class ViolationSummary(msgspec.Struct, frozen=True):
    source: str
    type: str
    event: str | None
    violation_type: str
    field: str
    description: str
    count: int
    first_seen: str
    last_seen: str
    sample_message_id: str


class SchemaField(msgspec.Struct, frozen=True):
    type: str
    event: str
    field: str
    value_type: str
    count: int
    first_seen: str
    last_seen: str


async def summarize_violations(
    conn: aiosqlite.Connection,
    *,
    source: str | None = None,
    event: str | None = None,
    since: str | None = None,
) -> list[ViolationSummary]:
    """Violations grouped by source, event, field and description, most frequent first."""
    where, params = ["1 = 1"], []
    for column, value in (("source", source), ("event", event)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("received_at >= ?")
        params.append(since)
    sql = f"""
        SELECT source, type, event, violation_type, field, description, count(*),
               min(received_at), max(received_at), max(message_id)
        FROM violations WHERE {" AND ".join(where)}
        GROUP BY source, type, event, violation_type, field, description
        ORDER BY count(*) DESC, source, event, field
    """  # noqa: S608 - the conditions are constants; values are parameters
    async with conn.execute(sql, params) as cursor:
        rows: list[Any] = list(await cursor.fetchall())
    return [ViolationSummary(*row) for row in rows]


async def source_schema(conn: aiosqlite.Connection, source: str) -> list[SchemaField]:
    sql = """
        SELECT type, event, field, value_type, count, first_seen, last_seen
        FROM schema_fields WHERE source = ? ORDER BY type, event, field, value_type
    """
    async with conn.execute(sql, (source,)) as cursor:
        rows: list[Any] = list(await cursor.fetchall())
    return [SchemaField(*row) for row in rows]
