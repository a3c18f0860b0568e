"""The identity store's rows as Profiles Sync rows: all of them, or those of a range of change
numbers (`cdpd.identity.changes`). Read-only; every read of a chunk is one read transaction, so
its rows and its last change number agree."""

from __future__ import annotations

from typing import Any

import aiosqlite
import msgspec

from cdpd.warehouse.mapping import Row, TableKey
from cdpd.warehouse.naming import PROFILES_SCHEMA

SCHEMA = PROFILES_SCHEMA
MATERIALISED = ("profile_merges", "user_identifiers", "user_traits")
Rows = dict[TableKey, dict[str, Row]]
Range = tuple[int, int] | None  # (after, up to and including) change numbers; None: every row

LAST_CHANGE = "SELECT seq FROM position WHERE name = 'changes'"
LAST_FORGET = "SELECT seq FROM position WHERE name = 'forgets'"
KNOWN_PROFILES = (
    "SELECT profile_id FROM profiles WHERE profile_id IN (SELECT value FROM json_each(?))"
)
LOOKUP_IDS = 500
# The change numbers of the first `limit` rows past a position, from each table's index.
NEXT_CHANGES = " UNION ALL ".join(
    f"SELECT * FROM (SELECT change_seq FROM {table} WHERE change_seq > :after"  # noqa: S608
    " ORDER BY change_seq LIMIT :limit)"
    for table in ("profiles", "external_ids", "traits", "merges", "removals")
)


class Chunk(msgspec.Struct):
    after: int  # the position read from (0 when the store was behind the one asked for)
    to_change: int  # the position after this chunk
    rows: Rows
    cleared: list[str]  # profiles whose materialised rows go before these rows are written
    rows_read: int
    # A deletion regulation's change is in this chunk: materialised rows of profiles the store
    # no longer has go (it kept no id of them).
    forgets: bool = False


async def last_change(conn: aiosqlite.Connection) -> int:
    return await _number(conn, LAST_CHANGE)


async def _number(conn: aiosqlite.Connection, sql: str) -> int:
    rows = list(await conn.execute_fetchall(sql))
    return int(rows[0][0])


async def changed(conn: aiosqlite.Connection, after: int, limit: int) -> Chunk:
    """The rows changed after change `after`, about `limit` of them: whole changes, so a
    chunk may hold more rows when one change wrote many."""
    await conn.execute("BEGIN")
    try:
        last = await last_change(conn)
        if after > last:  # the store was made again since: everything is new to the warehouse
            after = 0
        to_change = await _cut(conn, after, last, limit)
        if to_change == after:
            return Chunk(after, after, {}, [], 0)
        span = (after, to_change)
        rows = await _rows(conn, span)
        cleared = [
            pid
            for (pid,) in await conn.execute_fetchall(
                "SELECT profile_id FROM removals WHERE change_seq > ? AND change_seq <= ?", span
            )
        ]
        forgets = after < await _number(conn, LAST_FORGET) <= to_change
    finally:
        await conn.execute("COMMIT")
    return Chunk(after, to_change, rows, cleared, rows_read(rows) + len(cleared), forgets)


def rows_read(rows: Rows) -> int:
    """The identity store rows these rows were made of: a profile, identifier and trait each
    make two (a raw and a materialised one), a merge one."""
    merges = sum(
        1 for key in rows.get((SCHEMA, "id_graph_updates"), {}) if key.startswith("merge:")
    )
    return merges + sum(len(rows.get((SCHEMA, table), {})) for table in MATERIALISED)


async def unknown_profiles(conn: aiosqlite.Connection, pids: list[str]) -> list[str]:
    """Those of `pids` the store has no profile for."""
    known: set[str] = set()
    for start in range(0, len(pids), LOOKUP_IDS):
        chunk = msgspec.json.encode(pids[start : start + LOOKUP_IDS]).decode()
        known.update(pid for (pid,) in await conn.execute_fetchall(KNOWN_PROFILES, (chunk,)))
    return [pid for pid in pids if pid not in known]


async def everything(conn: aiosqlite.Connection) -> Rows:
    await conn.execute("BEGIN")
    try:
        return await _rows(conn, None)
    finally:
        await conn.execute("COMMIT")


async def _cut(conn: aiosqlite.Connection, after: int, last: int, limit: int) -> int:
    """The last change of the chunk after `after`: the change of its `limit`-th row, or the
    store's last change when fewer rows follow."""
    if after >= last:
        return after
    numbers = sorted(
        n for (n,) in await conn.execute_fetchall(NEXT_CHANGES, {"after": after, "limit": limit})
    )
    return numbers[limit - 1] if len(numbers) >= limit else last


def _where(span: Range, column: str = "change_seq") -> tuple[str, tuple[int, ...]]:
    if span is None:
        return "", ()
    return f" WHERE {column} > ? AND {column} <= ?", span


async def _rows(conn: aiosqlite.Connection, span: Range) -> Rows:
    profiles = await _profiles(conn, span)
    identifiers = await _identifiers(conn, span)
    traits = await _traits(conn, span)
    return {
        (SCHEMA, "id_graph_updates"): profiles[0] | await _merge_updates(conn, span),
        (SCHEMA, "external_id_mapping_updates"): identifiers[0],
        (SCHEMA, "profile_traits_updates"): traits[0],
        (SCHEMA, "profile_merges"): profiles[1],
        (SCHEMA, "user_identifiers"): identifiers[1],
        (SCHEMA, "user_traits"): traits[1],
    }


def _time(text: str) -> str:
    """The store's time text (`YYYY-MM-DDTHH:MM:SS.mmmZ`), which the plan turns into the
    warehouse's timestamp."""
    return text


async def _profiles(conn: aiosqlite.Connection, span: Range) -> tuple[dict[str, Row], ...]:
    """Each profile's creation (`id_graph_updates`) and where it lives now (`profile_merges`)."""
    where, params = _where(span)
    graph: dict[str, Row] = {}
    merges: dict[str, Row] = {}
    for pid, canonical, created_at, seq, message_id, source in await conn.execute_fetchall(
        "SELECT profile_id, canonical_id, created_at, created_seq, first_message_id,"  # noqa: S608
        f" first_source_id FROM profiles{where}",
        params,
    ):
        key = f"{pid}:{seq}"
        graph[key] = _graph_row(key, pid, pid, created_at, seq, message_id, source)
        merges[pid] = {"id": pid, "segment_id": pid, "canonical_segment_id": canonical}
    return graph, merges


async def _merge_updates(conn: aiosqlite.Connection, span: Range) -> dict[str, Row]:
    where, params = _where(span)
    rows: dict[str, Row] = {}
    for merge_id, seq, message_id, source, pid, into, at in await conn.execute_fetchall(
        "SELECT id, seq, message_id, source_id, profile_id, into_profile_id, merged_at"  # noqa: S608
        f" FROM merges{where}",
        params,
    ):
        key = f"merge:{merge_id}"
        rows[key] = _graph_row(key, pid, into, at, seq, message_id, source)
    return rows


def _graph_row(
    key: str, pid: str, canonical: str, at: str, seq: int, message_id: str, source: str
) -> Row:
    return {
        "id": key,
        "segment_id": pid,
        "canonical_segment_id": canonical,
        "triggering_event_message_id": message_id,
        "triggering_event_seq": seq,
        "timestamp": _time(at),
        "triggering_event_source_id": source,
    }


async def _identifiers(conn: aiosqlite.Connection, span: Range) -> tuple[dict[str, Row], ...]:
    """Each identifier on the profile it joined (the resolution of its first message:
    `external_id_mapping_updates`) and on its profile now (`user_identifiers`)."""
    where, params = _where(span, "e.change_seq")
    mappings: dict[str, Row] = {}
    owners: dict[str, Row] = {}
    for row in await conn.execute_fetchall(
        "SELECT e.collection, e.type, e.value, e.created_at, e.message_id, e.source_id,"  # noqa: S608
        " CASE e.collection WHEN 'accounts' THEN r.account_id ELSE r.profile_id END,"
        f" e.profile_id FROM external_ids e LEFT JOIN resolutions r ON r.seq = e.seq{where}",
        params,
    ):
        collection, kind, value, at, message_id, source, joined, pid = row
        key = f"{collection}:{kind}:{value}"
        mappings[key] = {
            "id": key,
            "segment_id": joined,
            "external_id_type": kind,
            "external_id_value": value,
            "collection": collection,
            "triggering_event_message_id": message_id,
            "triggering_event_source_id": source,
            "timestamp": _time(at),
        }
        owners[key] = {
            "id": key,
            "canonical_segment_id": pid,
            "type": kind,
            "external_id_value": value,
            "collection": collection,
            "timestamp": _time(at),
        }
    return mappings, owners


async def _traits(conn: aiosqlite.Connection, span: Range) -> tuple[dict[str, Row], ...]:
    """Each trait's latest value, as an update (`profile_traits_updates`) and as the profile's
    value now (`user_traits`)."""
    where, params = _where(span)
    updates: dict[str, Row] = {}
    current: dict[str, Row] = {}
    for pid, name, value, source, at, seq in await conn.execute_fetchall(
        f"SELECT profile_id, name, value, source_id, updated_at, seq FROM traits{where}",  # noqa: S608
        params,
    ):
        key = f"{pid}:{name}:{seq}"
        updates[key] = {
            "id": key,
            "segment_id": pid,
            "name": name,
            "value": value,
            "source_id": source,
            "seq": seq,
            "timestamp": _time(at),
        }
        row: dict[str, Any] = {"id": f"{pid}:{name}", "canonical_segment_id": pid, "name": name}
        current[f"{pid}:{name}"] = row | {"value": value, "timestamp": _time(at)}
    return updates, current
