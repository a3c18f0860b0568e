"""The privacy tables in the outbox: the migration that creates them and the SQL that reads
and writes them. README.md ("Privacy") documents the tables."""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite
import msgspec

# Appended to the outbox's MIGRATIONS; self-contained, so its number may change at a merge.
MIGRATION = """
CREATE TABLE privacy_inbox (
    source          TEXT NOT NULL,
    field           TEXT NOT NULL,
    suggested_class TEXT,
    matcher         TEXT,
    matched_on      TEXT,
    first_seen      TEXT NOT NULL,
    last_seen       TEXT NOT NULL,
    sample          TEXT,
    PRIMARY KEY (source, field)
) WITHOUT ROWID;
CREATE TABLE privacy_inventory (
    field         TEXT PRIMARY KEY,
    class         TEXT NOT NULL CHECK (class IN ('red', 'yellow', 'green')),
    classified_at TEXT NOT NULL,
    classified_by TEXT NOT NULL
) WITHOUT ROWID;
"""

# A field seen again keeps its first sighting and sample; a new suggestion replaces the old.
UPSERT_INBOX = """
INSERT INTO privacy_inbox (source, field, suggested_class, matcher, matched_on, first_seen,
                           last_seen, sample)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (source, field) DO UPDATE
SET suggested_class = coalesce(excluded.suggested_class, suggested_class),
    matcher = coalesce(excluded.matcher, matcher),
    matched_on = coalesce(excluded.matched_on, matched_on),
    first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen),
    sample = coalesce(sample, excluded.sample)
"""
CLASSIFY = """
INSERT INTO privacy_inventory (field, class, classified_at, classified_by) VALUES (?, ?, ?, ?)
ON CONFLICT (field) DO UPDATE
SET class = excluded.class, classified_at = excluded.classified_at,
    classified_by = excluded.classified_by
"""
UNCLASSIFY = "DELETE FROM privacy_inventory WHERE field = ?"
READ_CLASSES = "SELECT field, class FROM privacy_inventory"


class InboxField(msgspec.Struct, frozen=True):
    source: str
    field: str
    suggested_class: str | None
    matcher: str | None
    matched_on: str | None
    first_seen: str
    last_seen: str
    sample: str | None
    class_: str | None = msgspec.field(name="class", default=None)


class InventoryField(msgspec.Struct, frozen=True):
    field: str
    class_: str = msgspec.field(name="class")
    classified_at: str
    classified_by: str


async def upsert_inbox(rows: list[tuple[object, ...]], conn: aiosqlite.Connection) -> int:
    await conn.executemany(UPSERT_INBOX, rows)
    return len(rows)


async def classify(
    field: str, class_: str | None, at: str, by: str, conn: aiosqlite.Connection
) -> None:
    """Put `field` in the inventory with `class_`, or take it out (None)."""
    if class_ is None:
        await conn.execute(UNCLASSIFY, (field,))
    else:
        await conn.execute(CLASSIFY, (field, class_, at, by))


async def read_classes(conn: aiosqlite.Connection) -> dict[str, str]:
    """field -> class of the inventory; empty for an outbox older than the privacy tables."""
    try:
        rows = await conn.execute_fetchall(READ_CLASSES)
    except sqlite3.OperationalError:
        return {}
    return {field: class_ for field, class_ in rows}


async def inbox(
    conn: aiosqlite.Connection,
    *,
    source: str | None = None,
    include_classified: bool = False,
    since: str | None = None,
) -> list[InboxField]:
    """The fields seen (last seen from `since`), strongest suggestion first; without
    `include_classified`, only those nobody classified yet (Segment's Inbox)."""
    where, params = ["1 = 1"], []
    if source is not None:
        where.append("i.source = ?")
        params.append(source)
    if since is not None:
        where.append("i.last_seen >= ?")
        params.append(since)
    if not include_classified:
        where.append("v.field IS NULL")
    sql = f"""
        SELECT i.source, i.field, i.suggested_class, i.matcher, i.matched_on, i.first_seen,
               i.last_seen, i.sample, v.class
        FROM privacy_inbox AS i LEFT JOIN privacy_inventory AS v ON v.field = i.field
        WHERE {" AND ".join(where)}
        ORDER BY CASE i.suggested_class WHEN 'red' THEN 0 WHEN 'yellow' THEN 1
                 WHEN 'green' THEN 2 ELSE 3 END, i.field, i.source
    """  # noqa: S608 - the conditions are constants; values are parameters
    rows: list[Any] = list(await conn.execute_fetchall(sql, params))
    return [InboxField(*row) for row in rows]


async def inventory(conn: aiosqlite.Connection) -> list[InventoryField]:
    sql = """
        SELECT field, class, classified_at, classified_by FROM privacy_inventory
        ORDER BY CASE class WHEN 'red' THEN 0 WHEN 'yellow' THEN 1 ELSE 2 END, field
    """
    rows: list[Any] = list(await conn.execute_fetchall(sql))
    return [InventoryField(*row) for row in rows]


# -- pages of a workspace's fields (the console) ----------------------------------------------

CLASS_ORDER = "CASE {} WHEN 'red' THEN 0 WHEN 'yellow' THEN 1 WHEN 'green' THEN 2 ELSE 3 END"


class Page(msgspec.Struct, frozen=True):
    """One page of rows, and how many rows there are in all."""

    rows: list[Any]
    total: int


def _matching(sources: list[str], containing: str, column: str) -> tuple[str, list[Any]]:
    """The condition `source IN (...)` (and the text filter) with its parameters."""
    marks = ",".join("?" * len(sources)) or "NULL"
    where = f"i.source IN ({marks})"
    params: list[Any] = list(sources)
    if containing:
        escaped = containing.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where += f" AND {column} LIKE ? ESCAPE '\\'"
        params.append(f"%{escaped}%")
    return where, params


async def inbox_page(
    conn: aiosqlite.Connection, sources: list[str], *, containing: str, limit: int, offset: int
) -> Page:
    """The sources' fields nobody classified, strongest suggestion first, `limit` from
    `offset`, and how many there are."""
    where, params = _matching(sources, containing, "i.field")
    unclassified = (
        f"FROM privacy_inbox AS i WHERE {where} AND NOT EXISTS "  # noqa: S608 - values are parameters
        "(SELECT 1 FROM privacy_inventory AS v WHERE v.field = i.field)"
    )
    rows: list[Any] = list(
        await conn.execute_fetchall(
            "SELECT i.source, i.field, i.suggested_class, i.matcher, i.matched_on, i.first_seen,"
            f" i.last_seen, i.sample, NULL {unclassified}"
            f" ORDER BY {CLASS_ORDER.format('i.suggested_class')}, i.field, i.source"
            " LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
    )
    ((total,),) = await conn.execute_fetchall(f"SELECT count(*) {unclassified}", params)
    return Page([InboxField(*row) for row in rows], int(total))


async def inventory_page(
    conn: aiosqlite.Connection, sources: list[str], *, containing: str, limit: int, offset: int
) -> Page:
    """The classified fields the sources sent, red first, `limit` from `offset`, and how many
    there are."""
    where, params = _matching(sources, containing, "v.field")
    sent = (
        "FROM privacy_inventory AS v WHERE EXISTS "  # noqa: S608 - values are parameters
        f"(SELECT 1 FROM privacy_inbox AS i WHERE i.field = v.field AND {where})"
    )
    rows: list[Any] = list(
        await conn.execute_fetchall(
            "SELECT v.field, v.class, v.classified_at, v.classified_by"
            f" {sent} ORDER BY {CLASS_ORDER.format('v.class')}, v.field LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
    )
    ((total,),) = await conn.execute_fetchall(f"SELECT count(*) {sent}", params)
    return Page([InventoryField(*row) for row in rows], int(total))


async def sent_by(conn: aiosqlite.Connection, field: str, sources: list[str]) -> bool:
    """Whether one of the sources sent `field`."""
    marks = ",".join("?" * len(sources)) or "NULL"
    rows = await conn.execute_fetchall(
        f"SELECT 1 FROM privacy_inbox WHERE source IN ({marks}) AND field = ? LIMIT 1",  # noqa: S608
        [*sources, field],
    )
    return bool(list(rows))
