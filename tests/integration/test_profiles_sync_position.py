"""The Profiles Sync position: it moves with each chunk's rows, so a load that fails loses and
doubles nothing; and an identity store written before change numbers is numbered when opened,
so its first sync reads it in chunks like any change."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.config import SqliteWarehouse, Warehouse, identity_path
from cdpd.identity import changes, store
from cdpd.identity.profiles_sync import load_changes, load_everything
from cdpd.warehouse.sinks import Sink, open_sink
from tests.helpers import WarehouseProbe
from tests.integration.test_profile_api import IDENTITY, JOURNEY, send
from tests.integration.test_profiles_sync_changes import contents, others

LATER = (
    {"type": "screen", "anonymousId": "phone-1", "name": "Home", "messageId": "s1"},
    {"type": "identify", "anonymousId": "phone-1", "userId": "user-1", "messageId": "i3"},
    {"type": "identify", "userId": "user-1", "traits": {"plan": "team"}, "messageId": "i4"},
)


async def position(sink: Sink) -> int:
    async with sink.load() as loading:
        return await loading.profiles_position()


async def execute(warehouse: Warehouse, sql: str) -> None:
    if isinstance(warehouse, SqliteWarehouse):
        assert warehouse.path is not None
        with sqlite3.connect(warehouse.path) as conn:
            conn.executescript(sql)
        return
    conn = await asyncpg.connect(warehouse.dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def refuse_positions_past(warehouse: Warehouse, change_seq: int) -> None:
    """A trigger in the warehouse that fails the load moving the position past `change_seq`:
    its rows are written by then, and must go with it."""
    if isinstance(warehouse, SqliteWarehouse):
        await execute(
            warehouse,
            "CREATE TRIGGER refuse BEFORE UPDATE ON _cdpd_profiles_positions"
            f" WHEN NEW.change_seq > {change_seq} BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        return
    await execute(
        warehouse,
        "CREATE FUNCTION _cdpd.refuse() RETURNS trigger AS $$ BEGIN"
        f" IF NEW.change_seq > {change_seq} THEN RAISE EXCEPTION 'refused'; END IF;"
        " RETURN NEW; END $$ LANGUAGE plpgsql;"
        " CREATE TRIGGER refuse BEFORE UPDATE ON _cdpd.profiles_positions"
        " FOR EACH ROW EXECUTE FUNCTION _cdpd.refuse()",
    )


async def allow_positions(warehouse: Warehouse) -> None:
    if isinstance(warehouse, SqliteWarehouse):
        await execute(warehouse, "DROP TRIGGER refuse")
    else:
        await execute(warehouse, "DROP TRIGGER refuse ON _cdpd.profiles_positions")


async def test_a_failed_chunk_leaves_its_changes_for_the_next_sync(
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
    tmp_path: Path,
) -> None:
    config = make_config(IDENTITY)
    path = identity_path(config)
    async with others(warehouse, tmp_path) as made, AsyncExitStack() as stack:
        wh = await made.make("loaded")
        sink = await stack.enter_async_context(open_sink(config, wh))
        reference = await stack.enter_async_context(open_sink(config, await made.make("ref")))
        async with running(config) as server:
            await send(http, server, *JOURNEY)
            for loading in (sink, reference):
                await load_changes(path, loading, wh.max_columns)
            loaded = await position(sink)
            assert loaded > 0
            for message in LATER:  # a change each
                await send(http, server, message)
        with store.connect(path) as conn:
            last = changes.last_change(conn)  # the last message's trait, a chunk of its own
        await refuse_positions_past(wh, last - 1)
        with pytest.raises((sqlite3.Error, asyncpg.PostgresError)):
            await load_changes(path, sink, wh.max_columns, chunk_changes=1)
        assert loaded < await position(sink) == last - 1  # every chunk committed but the last
        await allow_positions(wh)
        resumed = await load_changes(path, sink, wh.max_columns, chunk_changes=1)
        assert resumed.rows_read > 0
        assert await position(sink) == last

        await load_changes(path, reference, wh.max_columns)  # the same, without a failure
        assert await contents(sink) == await contents(reference)
        again = await load_changes(path, sink, wh.max_columns)
        assert again.rows_read == 0  # nothing changed since


def downgrade_to_version_2(path: Path) -> None:
    """The store as cdpd wrote it before change numbers (same rows, version 2 tables)."""
    with sqlite3.connect(path) as conn:
        for table in ("profiles", "external_ids", "traits", "merges"):
            conn.execute(f"DROP INDEX {table}_change")
            conn.execute(f"ALTER TABLE {table} DROP COLUMN change_seq")
        conn.execute("DROP TABLE removals")
        conn.execute("DELETE FROM position WHERE name IN ('changes', 'forgets')")
        conn.execute("PRAGMA user_version = 2")


async def test_a_version_2_store_is_numbered_and_its_first_sync_replaces_the_tables(
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    config = make_config(IDENTITY)
    path = identity_path(config)
    async with running(config) as server:
        await send(http, server, *JOURNEY, *LATER)
    downgrade_to_version_2(path)
    with store.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (store.SCHEMA_VERSION,)
        numbers = [
            n
            for table in ("profiles", "external_ids", "traits", "merges")
            for (n,) in conn.execute(f"SELECT change_seq FROM {table}")
        ]
        last = conn.execute("SELECT seq FROM position WHERE name = 'changes'").fetchone()[0]
    assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert last == len(numbers) >= 8

    chunked = cdpd_config.SqliteWarehouse(name="chunked", path=str(tmp_path / "chunked.sqlite3"))
    whole = cdpd_config.SqliteWarehouse(name="whole", path=str(tmp_path / "whole.sqlite3"))
    async with open_sink(config, chunked) as a, open_sink(config, whole) as b:
        # As an older cdpd left it: the whole store, and a trait of a profile merged since.
        await load_everything(path, a, chunked.max_columns)
        with sqlite3.connect(str(chunked.path)) as conn:
            conn.execute(
                "INSERT INTO cdpd_profiles__user_traits (id, canonical_segment_id, name, value)"
                " VALUES ('use_merged:plan', 'use_merged', 'plan', '\"free\"')"
            )
        progress = await load_changes(path, a, chunked.max_columns, chunk_changes=3)
        await load_everything(path, b, whole.max_columns)
        assert progress.rows_read >= len(numbers)
        assert await position(a) == last
        assert await contents(a) == await contents(b)
