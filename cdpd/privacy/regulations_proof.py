"""The proof that users are gone (`cdpd regulations verify ID`): every store searched for their
ids. In the outbox, every column of every table but the records of regulations (the masked
`privacy_inbox.sample` included), and the `userId` of every payload; in the identity store
(`identity.sqlite3`) and Engage's (`engage.sqlite3`), when there is one, every column of every
table, for the id as it is and as JSON (trait values are stored as JSON); in each warehouse,
every column of every table (its Profiles Sync tables included); in each local file
destination, every line's `userId`. What is found is counted per table (or file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from cdpd.config import Config
from cdpd.destinations.filelog import LogFile
from cdpd.destinations.settings import FileDestination
from cdpd.privacy.deletion import USERS_PER_STATEMENT, line_filter
from cdpd.warehouse.naming import quote
from cdpd.warehouse.sinks import open_sink

RECORDS = ("regulations", "regulation_subjects", "regulation_targets", "suppressions")
BLOB_HOLDS = (
    "(typeof({column}) = 'blob' AND EXISTS (SELECT 1 FROM json_each({ids})"
    " WHERE instr({column}, CAST(value AS BLOB)) > 0))"
)
TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"


async def outbox_mentions(conn: aiosqlite.Connection, user_ids: Sequence[str]) -> dict[str, int]:
    return await sqlite_mentions(conn, user_ids, skip=RECORDS)


async def store_mentions(path: Path, user_ids: Sequence[str]) -> dict[str, int] | None:
    """A stage's own SQLite file searched (None: there is no such file)."""
    if not await asyncio.to_thread(path.exists):
        return None
    as_json = [msgspec.json.encode(user_id).decode() for user_id in user_ids]
    async with aiosqlite.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        return await sqlite_mentions(conn, [*user_ids, *as_json], skip=(), in_blobs=True)


async def sqlite_mentions(
    conn: aiosqlite.Connection,
    user_ids: Sequence[str],
    skip: Sequence[str],
    *,
    in_blobs: bool = False,
) -> dict[str, int]:
    """Rows of each table (but `skip`) holding one of `user_ids` in a column, or as the
    `userId` of a `payload`; with `in_blobs`, also anywhere in a BLOB (Engage's msgpack
    states hold strings as they are)."""
    found: dict[str, int] = {}
    tables: list[Any] = list(await conn.execute_fetchall(TABLES))
    for (table,) in tables:
        if table in skip:
            continue
        columns = [
            row[1] for row in await conn.execute_fetchall(f"PRAGMA table_info({quote(table)})")
        ]
        count = 0
        for start in range(0, len(user_ids), USERS_PER_STATEMENT):
            chunk = list(user_ids[start : start + USERS_PER_STATEMENT])
            marks = ", ".join(f"?{n}" for n in range(1, len(chunk) + 1))
            clauses = [f"CAST({quote(c)} AS TEXT) IN ({marks})" for c in columns]
            if in_blobs:
                ids = f"?{len(chunk) + 1}"  # the chunk as a JSON array
                clauses += [BLOB_HOLDS.format(column=quote(c), ids=ids) for c in columns]
            if "payload" in columns:
                clauses.append(
                    f"(json_valid(payload) AND CAST(payload ->> '$.userId' AS TEXT) IN ({marks}))"
                )
            sql = f"SELECT count(*) FROM {quote(table)} WHERE {' OR '.join(clauses)}"  # noqa: S608 - names quoted, values bound
            params = [*chunk, msgspec.json.encode(chunk).decode()] if in_blobs else chunk
            ((rows,),) = await conn.execute_fetchall(sql, params)
            count += int(rows)
        if count:
            found[table] = count
    return found


async def warehouse_mentions(config: Config, user_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    found = {}
    for warehouse in config.warehouses:
        async with open_sink(config, warehouse) as sink:
            found[warehouse.name] = await sink.find_users(user_ids)
    return found


def file_mentions(config: Config, user_ids: Sequence[str]) -> dict[str, int]:
    """Lines holding the users, per file destination (its current and rotated files)."""
    holds = line_filter(user_ids, ())
    found = {}
    for destination in config.destinations:
        if isinstance(destination, FileDestination):
            found[destination.name] = LogFile(Path(destination.path), fsync=False).count(holds)
    return found
