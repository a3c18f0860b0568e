"""Profiles Sync: the identity store's profiles, in Segment's Profiles Sync tables, loaded into
each warehouse after its events (schema `cdpd_profiles`).

Raw tables (one row per change, keyed so that loading again adds nothing):
`id_graph_updates` (a profile created, or merged into another, with the triggering message),
`external_id_mapping_updates` (an identifier first seen, on the profile it joined then),
`profile_traits_updates` (a trait's latest value). Materialised tables (upserted):
`profile_merges` (every segment_id and its canonical one), `user_identifiers`, `user_traits`.
Every sync sends the whole identity graph (upserts by id), which is simple and idempotent; it
costs time in proportion to the number of profiles.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from cdpd.config import Config, identity_path
from cdpd.identity import store
from cdpd.warehouse.mapping import MappedBatch, Row, TableKey
from cdpd.warehouse.naming import PROFILES_SCHEMA
from cdpd.warehouse.plan import plan_load
from cdpd.warehouse.sinks import Sink

SCHEMA = PROFILES_SCHEMA
MATERIALISED = frozenset({"profile_merges", "user_identifiers", "user_traits"})


async def load(config: Config, sink: Sink, max_columns: int) -> dict[str, int]:
    """Load the profiles into `sink`; rows written per `schema.table` (nothing without a store)."""
    path = identity_path(config)
    if config.identity is None or not path.exists():
        return {}
    rows = await _rows(path)
    batch = MappedBatch(rows=rows, discards=[], dropped=Counter(), long_names={})
    async with sink.load() as loading:
        plan = plan_load(
            batch,
            await loading.catalog([SCHEMA]),
            max_columns=max_columns,
            encode_timestamp=sink.encode_timestamp,
        )
        for table in plan.tables:
            table.upsert = table.table in MATERIALISED
        written = await loading.apply(plan)
    return {f"{schema}.{table}": n for (schema, table), n in written.items()}


async def _rows(path: Path) -> dict[TableKey, dict[str, Row]]:
    async with store.connect_reader(path) as conn:
        return {
            (SCHEMA, "id_graph_updates"): await _id_graph(conn),
            (SCHEMA, "external_id_mapping_updates"): await _mappings(conn),
            (SCHEMA, "profile_traits_updates"): await _trait_updates(conn),
            (SCHEMA, "profile_merges"): await _merges(conn),
            (SCHEMA, "user_identifiers"): await _identifiers(conn),
            (SCHEMA, "user_traits"): await _traits(conn),
        }


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def _id_graph(conn: aiosqlite.Connection) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for pid, created_at, seq, message_id, source in await conn.execute_fetchall(
        "SELECT profile_id, created_at, created_seq, first_message_id, first_source_id"
        " FROM profiles"
    ):
        rows[f"{pid}:{seq}"] = _graph_row(f"{pid}:{seq}", pid, pid, created_at, seq, message_id)
        rows[f"{pid}:{seq}"]["triggering_event_source_id"] = source
    for merge_id, seq, message_id, source, pid, into, at in await conn.execute_fetchall(
        "SELECT id, seq, message_id, source_id, profile_id, into_profile_id, merged_at FROM merges"
    ):
        key = f"merge:{merge_id}"
        rows[key] = _graph_row(key, pid, into, at, seq, message_id)
        rows[key]["triggering_event_source_id"] = source
    return rows


def _graph_row(key: str, pid: str, canonical: str, at: str, seq: int, message_id: str) -> Row:
    return {
        "id": key,
        "segment_id": pid,
        "canonical_segment_id": canonical,
        "triggering_event_message_id": message_id,
        "triggering_event_seq": seq,
        "timestamp": _time(at),
    }


async def _mappings(conn: aiosqlite.Connection) -> dict[str, Row]:
    """Each identifier on the profile it joined (the resolution of its first message)."""
    rows: dict[str, Row] = {}
    for collection, kind, value, at, message_id, source, joined in await conn.execute_fetchall(
        "SELECT e.collection, e.type, e.value, e.created_at, e.message_id, e.source_id,"
        " CASE e.collection WHEN 'accounts' THEN r.account_id ELSE r.profile_id END"
        " FROM external_ids e LEFT JOIN resolutions r ON r.seq = e.seq"
    ):
        key = f"{collection}:{kind}:{value}"
        rows[key] = {
            "id": key,
            "segment_id": joined,
            "external_id_type": kind,
            "external_id_value": value,
            "collection": collection,
            "triggering_event_message_id": message_id,
            "triggering_event_source_id": source,
            "timestamp": _time(at),
        }
    return rows


async def _trait_updates(conn: aiosqlite.Connection) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for pid, name, value, source, at, seq in await conn.execute_fetchall(
        "SELECT profile_id, name, value, source_id, updated_at, seq FROM traits"
    ):
        key = f"{pid}:{name}:{seq}"
        rows[key] = {
            "id": key,
            "segment_id": pid,
            "name": name,
            "value": value,
            "source_id": source,
            "seq": seq,
            "timestamp": _time(at),
        }
    return rows


async def _merges(conn: aiosqlite.Connection) -> dict[str, Row]:
    return {
        pid: {"id": pid, "segment_id": pid, "canonical_segment_id": canonical}
        for pid, canonical in await conn.execute_fetchall(
            "SELECT profile_id, canonical_id FROM profiles"
        )
    }


async def _identifiers(conn: aiosqlite.Connection) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for collection, kind, value, pid, at in await conn.execute_fetchall(
        "SELECT collection, type, value, profile_id, created_at FROM external_ids"
    ):
        key = f"{collection}:{kind}:{value}"
        rows[key] = {
            "id": key,
            "canonical_segment_id": pid,
            "type": kind,
            "external_id_value": value,
            "collection": collection,
            "timestamp": _time(at),
        }
    return rows


async def _traits(conn: aiosqlite.Connection) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for pid, name, value, at in await conn.execute_fetchall(
        "SELECT profile_id, name, value, updated_at FROM traits"
    ):
        key = f"{pid}:{name}"
        row: dict[str, Any] = {"id": key, "canonical_segment_id": pid, "name": name}
        rows[key] = row | {"value": value, "timestamp": _time(at)}
    return rows
