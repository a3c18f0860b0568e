"""The Profiles and Audiences pages' reads, one implementation for both backends: the same
queries over the identity store and Engage's file, wherever the node reads them
(`seams.ProfileFiles`): the SQLite backend its identity stage's reader and `engage.sqlite3`;
a JetStream node the live files while it holds the profiles lease, else the newest snapshot's
(`cdpd.cluster.console`).

Sizes and per-day counts are the ones Engage keeps as memberships change (`engage_sizes`,
`engage_change_days`): a page reads a few rows whatever the audience's size. The newest
changes come by the `engage_changes (key, seq)` index.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite

from cdpd.console.seams import AudienceFigures
from cdpd.identity import reads
from cdpd.model.timestamps import format_ms, now_ms, parse_ms

DAY_MS = 86_400_000
DAYS_SHOWN = 30
NEWEST_SHOWN = 20
EVENTS_SHOWN = 20
EVENTS_READ = 200  # the newest of every source, of which the workspace's are shown


# -- profiles --------------------------------------------------------------------------------


async def profile(
    conn: aiosqlite.Connection, sources: set[str], kind: str, value: str, *, events_kept: bool
) -> dict[str, Any] | None:
    """The profile holding KIND:VALUE as `sources` contributed to it (None: none of them did);
    its events None where this node does not keep the history."""
    pid = await reads.find(conn, "users", kind, value)
    if pid is None:
        return None
    identifiers = [i for i in await reads.external_ids(conn, pid) if i.source_id in sources]
    if not identifiers:
        return None
    traits = [t for t in await reads.traits(conn, pid) if t.source_id in sources]
    return {
        "id": pid,
        "row": await reads.profile(conn, pid),
        "identifiers": identifiers,
        "traits": [(t.name, json.dumps(t.value), t.source_id, t.updated_at) for t in traits],
        "events": await _events(conn, pid, sources) if events_kept else None,
        "merges": await _merges(conn, pid, sources),
    }


async def _events(conn: aiosqlite.Connection, pid: str, sources: set[str]) -> list[dict[str, Any]]:
    events = await reads.events(
        conn,
        pid,
        start="",
        end="9999",
        before_seq=None,
        after_seq=None,
        descending=True,
        include=None,
        exclude=None,
        limit=EVENTS_READ,
    )
    return [
        {"event": e, "message": _pretty(e.payload), "summary": _summary(e.payload)}
        for e in events
        if e.source_id in sources
    ][:EVENTS_SHOWN]


async def _merges(conn: aiosqlite.Connection, pid: str, sources: set[str]) -> list[dict[str, Any]]:
    merges = []
    for merge in await reads.merges(conn, pid):
        if merge.source_id not in sources:
            continue
        message = await reads.payload(conn, merge.seq)
        merges.append({"merge": merge, "message": _pretty(message) if message else None})
    return merges


def _summary(payload: str) -> str:
    try:
        message = json.loads(payload)
    except ValueError:
        return "?"
    kind = message.get("type", "?")
    name = message.get("event") or message.get("name") or ""
    return f"{kind} {name}".strip()


def _pretty(payload: str) -> str:
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        return payload


# -- audiences and computed traits -----------------------------------------------------------


@contextlib.asynccontextmanager
async def engage(path: Path | None) -> AsyncIterator[aiosqlite.Connection | None]:
    """Engage's file read-only, or None before Engage has created it (mode=ro never creates
    a file)."""
    if path is None:
        yield None
        return
    try:
        conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        yield None
        return
    try:
        yield conn
    finally:
        await conn.close()


async def size(conn: aiosqlite.Connection, key: str) -> int:
    """Kept by Engage as memberships change (`engage_sizes`); a file Engage has not migrated
    yet is counted."""
    try:
        rows = await conn.execute_fetchall("SELECT size FROM engage_sizes WHERE key = ?", (key,))
    except sqlite3.OperationalError:  # a version 2 file: no engage_sizes yet
        rows = await conn.execute_fetchall(
            "SELECT count(*) FROM engage_values WHERE key = ?", (key,)
        )
    return int(next(iter(rows), (0,))[0])


async def figures(conn: aiosqlite.Connection, key: str) -> AudienceFigures:
    return AudienceFigures(
        size=await size(conn, key), days=await _per_day(conn, key), newest=await _newest(conn, key)
    )


async def _per_day(conn: aiosqlite.Connection, key: str) -> list[dict[str, Any]]:
    """Entries, exits and new values per UTC day, the last DAYS_SHOWN days, newest first
    (`engage_change_days`, kept by Engage as it records changes)."""
    first_day = format_ms((now_ms() // DAY_MS - DAYS_SHOWN + 1) * DAY_MS)[:10]
    try:
        rows = await conn.execute_fetchall(
            "SELECT day, entered, exited, computed FROM engage_change_days"
            " WHERE key = ? AND day >= ? ORDER BY day DESC",
            (key, first_day),
        )
    except sqlite3.OperationalError:  # a version 2 file: no engage_change_days yet
        return []
    return [
        {
            "t": parse_ms(f"{day}T00:00:00Z") // 1000,
            "day": day,
            "entered": entered,
            "exited": exited,
            "computed": computed,
        }
        for day, entered, exited, computed in rows
    ]


async def _newest(conn: aiosqlite.Connection, key: str) -> list[dict[str, Any]]:
    rows = await conn.execute_fetchall(
        "SELECT collection, id, change, value, at_ms FROM engage_changes WHERE key = ?"
        " ORDER BY seq DESC LIMIT ?",
        (key, NEWEST_SHOWN),
    )
    return [
        {"collection": c, "id": i, "change": ch, "value": v, "at": format_ms(at)}
        for c, i, ch, v, at in rows
    ]
