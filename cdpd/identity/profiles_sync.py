"""Profiles Sync: the identity store's profiles, in Segment's Profiles Sync tables, loaded into
each warehouse after its events (schema `cdpd_profiles`).

Raw tables (one row per change, keyed so that loading again adds nothing):
`id_graph_updates` (a profile created, or merged into another, with the triggering message),
`external_id_mapping_updates` (an identifier first seen, on the profile it joined then),
`profile_traits_updates` (a trait's latest value). Materialised tables (the store's rows as they
are now): `profile_merges` (every segment_id and its canonical one), `user_identifiers`,
`user_traits`.

Each sync reads only what changed since the warehouse's Profiles Sync position (a change
number of the identity store, see `cdpd.identity.changes`), in chunks of about
`CHUNK_CHANGES` rows. A chunk is one load transaction: the materialised rows of the profiles
it clears and of the rows it carries are deleted, its rows written, and the position moved, so
a crash never loses or doubles a change. A new warehouse (or one loaded before change numbers)
starts at change 0: the first chunk empties its materialised tables, and it gets every row.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import aiosqlite
import msgspec
import structlog

from cdpd.config import Config, identity_path
from cdpd.identity import profiles_rows, store
from cdpd.identity.profiles_rows import MATERIALISED, SCHEMA, Rows
from cdpd.warehouse.mapping import MappedBatch, TableKey
from cdpd.warehouse.plan import plan_load
from cdpd.warehouse.sinks import Load, Sink

log = structlog.get_logger("cdpd.identity")

CHUNK_CHANGES = 5_000
# The materialised tables' column naming a canonical profile, which a cleared profile's rows
# are deleted by (`profile_merges` by its id: the profile itself).
CLEARED_BY = {
    "profile_merges": "id",
    "user_identifiers": "canonical_segment_id",
    "user_traits": "canonical_segment_id",
}


class Progress(msgspec.Struct):
    """What a Profiles Sync did: rows read from the identity store, rows written per table."""

    rows_read: int = 0
    written: Counter[str] = msgspec.field(default_factory=Counter)


async def load(config: Config, sink: Sink, max_columns: int) -> dict[str, int]:
    """Load what changed since `sink`'s position; rows written per `schema.table` (nothing
    without a store)."""
    path = identity_path(config)
    if config.identity is None or not path.exists():
        return {}
    progress = await load_changes(path, sink, max_columns)
    return dict(progress.written)


async def load_changes(
    path: Path, sink: Sink, max_columns: int, *, chunk_changes: int = CHUNK_CHANGES
) -> Progress:
    """Every change past the warehouse's position, a chunk per load transaction."""
    progress = Progress()
    async with store.connect_reader(path) as conn:
        while True:
            async with sink.load() as loading:
                loaded = await _load_chunk(loading, sink, conn, chunk_changes, max_columns)
            if loaded is None:
                return progress
            progress.rows_read += loaded.rows_read
            progress.written.update(loaded.written)


async def _load_chunk(
    loading: Load, sink: Sink, conn: aiosqlite.Connection, chunk_changes: int, max_columns: int
) -> Progress | None:
    """The next chunk past the position, and the position moved past it (None: no change)."""
    after = await loading.profiles_position()
    chunk = await profiles_rows.changed(conn, after, chunk_changes)
    if chunk.after != after:
        log.warning(
            "profiles_sync_restarted",
            position=after,
            last_change=chunk.to_change,
            reason="the identity store is behind the warehouse: a new store",
        )
    if chunk.to_change == after:
        return None
    if chunk.after == 0:  # a first sync: drop what an older cdpd (or store) left
        for table in MATERIALISED:
            await loading.delete_rows((SCHEMA, table), None, None)
    elif chunk.forgets:
        await _drop_forgotten(loading, conn)
    written = await _write(loading, sink, chunk.rows, chunk.cleared, max_columns)
    await loading.set_profiles_position(chunk.to_change)
    return Progress(rows_read=chunk.rows_read, written=_named(written))


async def load_everything(path: Path, sink: Sink, max_columns: int) -> Progress:
    """The whole store in one load, the materialised tables replaced: what every sync did
    before change numbers, kept as the reference the incremental read is checked against.
    It leaves the position alone."""
    async with store.connect_reader(path) as conn:
        rows = await profiles_rows.everything(conn)
    async with sink.load() as loading:
        for table in MATERIALISED:
            await loading.delete_rows((SCHEMA, table), None, None)
        written = await _write(loading, sink, rows, [], max_columns)
    return Progress(rows_read=profiles_rows.rows_read(rows), written=_named(written))


async def _drop_forgotten(loading: Load, conn: aiosqlite.Connection) -> None:
    """After a deletion regulation: the materialised rows of profiles the store no longer has.
    It reads every profile id these tables hold, which only a deletion makes necessary."""
    for table, column in CLEARED_BY.items():
        held = await loading.distinct_values((SCHEMA, table), column)
        gone = await profiles_rows.unknown_profiles(conn, held)
        if gone:
            await loading.delete_rows((SCHEMA, table), column, gone)


async def _write(
    loading: Load, sink: Sink, rows: Rows, cleared: list[str], max_columns: int
) -> dict[TableKey, int]:
    """Clear the `cleared` profiles' materialised rows and the materialised rows being
    written again (so that a value gone NULL is NULL), then write every row."""
    for table, column in CLEARED_BY.items():
        if cleared:
            await loading.delete_rows((SCHEMA, table), column, cleared)
        rewritten = list(rows.get((SCHEMA, table), {}))
        if rewritten:
            await loading.delete_rows((SCHEMA, table), "id", rewritten)
    present = {key: by_id for key, by_id in rows.items() if by_id}
    if not present:
        return {}
    batch = MappedBatch(rows=present, discards=[], dropped=Counter(), long_names={})
    plan = plan_load(
        batch,
        await loading.catalog([SCHEMA]),
        max_columns=max_columns,
        encode_timestamp=sink.encode_timestamp,
    )
    return await loading.apply(plan)


def _named(written: dict[TableKey, int]) -> Counter[str]:
    return Counter({f"{schema}.{table}": n for (schema, table), n in written.items()})
