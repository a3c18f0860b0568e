"""Profiles Sync reads only what changed, and loads what reading everything loaded.

A randomised history of identifies, tracks, aliases, groups, merges, unmerges, deleted
identifiers and deletion regulations goes through a real daemon whose warehouse syncs now and
then (incremental). After each of its syncs a reference warehouse is loaded with the whole
store, and a deletion regulation's erasure is made in it too. Their Profiles Sync tables must
be identical; so must those of a warehouse added at the end (reading from change 0, in small
chunks) and one loaded once with the whole store. SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest

from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.config import PostgresWarehouse, SqliteWarehouse, Warehouse, identity_path
from cdpd.identity.profiles_rows import MATERIALISED, SCHEMA
from cdpd.identity.profiles_sync import load_changes, load_everything
from cdpd.warehouse.sinks import Sink, open_sink
from tests.helpers import POSTGRES_ADMIN_DSN, WarehouseProbe
from tests.integration.test_profile_api import IDENTITY, SPACE, auth, send
from tests.regulations import ADMIN, AUTH, regulate, settled

TABLES = (
    "id_graph_updates",
    "external_id_mapping_updates",
    "profile_traits_updates",
    *MATERIALISED,
)
USERS = ("u1", "u2", "u3", "u4")
ANONYMOUS = ("a1", "a2", "a3", "a4", "a5", "a6")
EMAILS = ("e1@x.io", "e2@x.io", None)
STEPS = 45


class Other:
    """Warehouses outside the daemon's config, of the probe's kind (PostgreSQL: a database
    each, dropped at the end)."""

    def __init__(self, probe: WarehouseProbe, tmp_path: Path) -> None:
        self.probe = probe
        self.tmp_path = tmp_path
        self.databases: list[str] = []

    async def make(self, name: str) -> Warehouse:
        if self.probe.kind == "sqlite":
            return SqliteWarehouse(name=name, path=str(self.tmp_path / f"{name}.sqlite3"))
        database = f"cdpd_test_{name}_{secrets.token_hex(4)}"
        await _admin(f'CREATE DATABASE "{database}"')
        self.databases.append(database)
        return PostgresWarehouse(
            name=name, dsn=POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
        )

    async def close(self) -> None:
        for database in self.databases:
            await _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def others(probe: WarehouseProbe, tmp_path: Path) -> AsyncIterator[Other]:
    made = Other(probe, tmp_path)
    try:
        yield made
    finally:
        await made.close()


async def contents(sink: Sink) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Every Profiles Sync table's rows by id, each row as (column, value) pairs."""
    found: dict[str, dict[str, tuple[Any, ...]]] = {}
    for table in TABLES:
        found[table] = await sink_rows(sink, table)
    return found


async def sink_rows(sink: Sink, table: str) -> dict[str, tuple[Any, ...]]:
    from cdpd.warehouse.sinks.postgres import PostgresSink
    from cdpd.warehouse.sinks.sqlite import SqliteSink

    async with sink.load() as loading:
        if (SCHEMA, table) not in await loading.catalog([SCHEMA]):
            return {}

    if isinstance(sink, SqliteSink):
        conn = sink._conn
        cursor = await conn.execute(f'SELECT * FROM "{SCHEMA}__{table}"')
        names = [d[0] for d in cursor.description]
        rows = [tuple(r) for r in await cursor.fetchall()]
    else:
        assert isinstance(sink, PostgresSink)
        records = await sink._conn.fetch(f'SELECT * FROM "{SCHEMA}"."{table}"')
        names = list(records[0].keys()) if records else []
        rows = [tuple(r) for r in records]
    return {row[names.index("id")]: tuple(sorted(zip(names, row, strict=True))) for row in rows}


class History:
    """The randomised history, sent to a running daemon; `sync` is called at each sync."""

    def __init__(
        self,
        rng: random.Random,
        http: aiohttp.ClientSession,
        server: Running,
        sync: Callable[[], Any],
        erase: Callable[[str], Any],
    ) -> None:
        self.rng, self.http, self.server = rng, http, server
        self.sync, self.erase = sync, erase
        self.sent = 0
        self.deleted: set[str] = set()

    async def run(self, steps: int) -> None:
        actions = [
            (self.identify, 40),
            (self.track, 12),
            (self.alias, 10),
            (self.group, 6),
            (self.sync, 12),
            (self.unmerge, 8),
            (self.delete_identifier, 5),
            (self.delete_user, 4),
        ]
        for _ in range(steps):
            action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
            await action()
        await self.sync()

    def _message(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sent += 1
        return {"type": kind, "messageId": f"m{self.sent}", **fields}

    def _ids(self) -> dict[str, str]:
        ids = {}
        if self.rng.random() < 0.6:
            ids["userId"] = self.rng.choice([u for u in USERS if u not in self.deleted] or ["u9"])
        if not ids or self.rng.random() < 0.6:
            ids["anonymousId"] = self.rng.choice(ANONYMOUS)
        return ids

    def _traits(self) -> dict[str, Any]:
        names = self.rng.sample(["email", "plan", "name"], self.rng.randint(0, 3))
        values = {"email": EMAILS, "plan": ("free", "pro", None), "name": ("Jo", "Al", None)}
        return {n: self.rng.choice(values[n]) for n in names}

    async def identify(self) -> None:
        await send(
            self.http, self.server, self._message("identify", traits=self._traits(), **self._ids())
        )

    async def track(self) -> None:
        await send(self.http, self.server, self._message("track", event="Viewed", **self._ids()))

    async def alias(self) -> None:
        previous = self.rng.choice(ANONYMOUS + USERS)
        user = self.rng.choice(USERS)
        await send(self.http, self.server, self._message("alias", previousId=previous, userId=user))

    async def group(self) -> None:
        traits = {"plan": self.rng.choice(("team", "enterprise"))}
        group = self.rng.choice(("g1", "g2"))
        await send(
            self.http,
            self.server,
            self._message("group", groupId=group, traits=traits, **self._ids()),
        )

    def _merged_identifier(self) -> tuple[str, str] | None:
        """An identifier of a profile that holds a merge, if any."""
        identity = self.server.identity
        assert identity is not None
        merged = [p for p in identity.graph.profiles.values() if p.merges and p.identifiers]
        if not merged:
            return None
        profile = self.rng.choice(sorted(merged, key=lambda p: p.id))
        return self.rng.choice(sorted(profile.identifiers))

    async def unmerge(self) -> None:
        found = self._merged_identifier()
        if found is None:
            return
        async with self.http.post(
            f"{self.server.url}/admin/profiles/unmerge",
            json={"identifier": f"{found[0]}:{found[1]}"},
            headers=AUTH,
        ) as resp:
            assert resp.status in (200, 400), await resp.text()

    async def delete_identifier(self) -> None:
        found = self._merged_identifier()
        if found is None or found[0] not in ("anonymous_id", "email"):
            return
        kind, value = found
        url = (
            f"{self.server.url}/v1/spaces/{SPACE}/collections/users/profiles/"
            f"{kind}:{quote(value, safe='')}/external_ids/delete"
        )
        body = {"delete_external_ids": [{"id": value, "type": kind}]}
        async with self.http.post(url, json=body, headers=auth()) as resp:
            assert resp.status == 200, await resp.text()

    async def delete_user(self) -> None:
        identity = self.server.identity
        assert identity is not None
        known = [u for u in USERS if identity.graph.owner("users", ("user_id", u)) is not None]
        if not known:
            return
        user = self.rng.choice(known)
        regulation = await settled(
            self.http, self.server, await regulate(self.http, self.server, "DELETE_INTERNAL", user)
        )
        assert regulation["overallStatus"] == "FINISHED", regulation
        self.deleted.add(user)
        await self.erase(user)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_incremental_sync_loads_what_the_whole_store_loads(
    seed: int,
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
    tmp_path: Path,
) -> None:
    config = make_config(ADMIN + IDENTITY + warehouse.toml)
    store_path = identity_path(config)
    (wh,) = config.warehouses
    async with others(warehouse, tmp_path) as made, AsyncExitStack() as stack:
        reference = await stack.enter_async_context(open_sink(config, await made.make("ref")))

        async with running(config) as server:
            await server.warehouses.wait_for_syncs(wh.name, 1)  # the start's, of an empty store

            async def sync() -> None:
                report = await server.warehouses.sync_now(wh.name)
                assert report.status == "success", report.error
                await load_everything(store_path, reference, wh.max_columns)

            async def erase(user: str) -> None:
                await reference.erase_users([user], None)

            await History(random.Random(seed), http, server, sync, erase).run(STEPS)

        incremental = await stack.enter_async_context(open_sink(config, wh))
        expected = await contents(reference)
        got = await contents(incremental)
        for table in TABLES:
            assert got[table] == expected[table], table
        assert any(expected[t] for t in MATERIALISED)

        later = await stack.enter_async_context(open_sink(config, await made.make("later")))
        once = await stack.enter_async_context(open_sink(config, await made.make("once")))
        progress = await load_changes(store_path, later, wh.max_columns, chunk_changes=7)
        assert progress.rows_read > 0
        await load_everything(store_path, once, wh.max_columns)
        from_start = await contents(later)
        assert from_start == await contents(once)
        for table in MATERIALISED:
            assert from_start[table] == got[table], table


async def test_a_profile_unmerged_from_a_deleted_user_is_loaded_again(
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
    tmp_path: Path,
) -> None:
    """The erasure finds the deleted user's profiles through the merges it loaded, a merge
    since undone included: the profile split off goes from the warehouse too, and comes back
    with the next sync, as the whole store's read brings it back."""
    config = make_config(ADMIN + IDENTITY + warehouse.toml)
    store_path = identity_path(config)
    (wh,) = config.warehouses
    async with others(warehouse, tmp_path) as made, AsyncExitStack() as stack:
        reference = await stack.enter_async_context(open_sink(config, await made.make("ref")))
        async with running(config) as server:
            await server.warehouses.wait_for_syncs(wh.name, 1)

            async def sync() -> None:
                report = await server.warehouses.sync_now(wh.name)
                assert report.status == "success", report.error
                await load_everything(store_path, reference, wh.max_columns)

            async def erase(user: str) -> None:
                await reference.erase_users([user], None)

            history = History(random.Random(0), http, server, sync, erase)
            await send(http, server, history._message("track", userId="u1", event="Viewed"))
            await send(http, server, history._message("page", anonymousId="a1", name="Home"))
            await send(http, server, history._message("identify", anonymousId="a1", userId="u1"))
            await sync()
            async with http.post(
                f"{server.url}/admin/profiles/unmerge",
                json={"identifier": "anonymous_id:a1"},
                headers=AUTH,
            ) as resp:
                assert resp.status == 200, await resp.text()
            await sync()
            regulation = await settled(
                http, server, await regulate(http, server, "DELETE_INTERNAL", "u1")
            )
            assert regulation["overallStatus"] == "FINISHED", regulation
            await erase("u1")
            await sync()
        incremental = await stack.enter_async_context(open_sink(config, wh))
        expected = await contents(reference)
        assert any(
            row[0] == "users:anonymous_id:a1"
            for row in [(k,) for k in expected["user_identifiers"]]
        )
        assert await contents(incremental) == expected
