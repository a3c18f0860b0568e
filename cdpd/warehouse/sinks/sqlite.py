"""The SQLite warehouse: one file, one table per (source schema, table) named `<schema>__<table>`.

All SQL of this warehouse kind is in this module. Every load is one `BEGIN IMMEDIATE`
transaction, so loads from two processes take turns, and the load position (table
`_cdpd_positions`) commits with the rows it covers. Identifiers are always quoted; values are
always parameters. Declared column types: TEXT, BIGINT, DOUBLE, BOOLEAN (0/1) and TIMESTAMP
(text, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC, so text order is time order).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import msgspec

from cdpd.model.pragmas import SECURE_DELETE
from cdpd.warehouse.mapping import Discard, TableKey
from cdpd.warehouse.naming import (
    DISCARDS_TABLE,
    MERGE_CHAIN_MAX,
    MERGE_HISTORY,
    MERGED_INTO,
    PROFILE_COLUMNS,
    PROFILE_OF_USER,
    PROFILES_SCHEMA,
    quote,
)
from cdpd.warehouse.plan import Catalog, LoadPlan, TablePlan
from cdpd.warehouse.report import SyncReport, TableRows
from cdpd.warehouse.values import ColumnType, utc_text

SCHEMA_SEPARATOR = "__"  # snake-cased schema names never contain it, so the first one splits
BUSY_TIMEOUT_MS = 120_000  # a racing load waits this long for the other to commit

SQL_TYPES = {
    ColumnType.STRING: "TEXT",
    ColumnType.INTEGER: "BIGINT",
    ColumnType.FLOAT: "DOUBLE",
    ColumnType.BOOLEAN: "BOOLEAN",
    ColumnType.TIMESTAMP: "TIMESTAMP",
}
COLUMN_TYPES = {sql: column_type for column_type, sql in SQL_TYPES.items()}

BOOTSTRAP = (
    """CREATE TABLE IF NOT EXISTS _cdpd_positions (
        warehouse TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS _cdpd_syncs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, warehouse TEXT NOT NULL, report TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS _cdpd_profiles_positions (
        warehouse TEXT PRIMARY KEY, change_seq INTEGER NOT NULL, updated_at TEXT NOT NULL)""",
)
DISCARDS_COLUMNS = """(
    table_name TEXT NOT NULL, row_id TEXT NOT NULL, column_name TEXT NOT NULL,
    column_value TEXT NOT NULL, reason TEXT NOT NULL, received_at TEXT, uuid_ts TIMESTAMP,
    PRIMARY KEY (table_name, row_id, column_name))"""
INSERT_DISCARD = """INSERT INTO {table} (table_name, row_id, column_name, column_value, reason,
    received_at, uuid_ts) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"""
SELECT_POSITION = "SELECT seq FROM _cdpd_positions WHERE warehouse = ?"
UPSERT_POSITION = """INSERT INTO _cdpd_positions (warehouse, seq, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (warehouse) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at"""
SELECT_PROFILES_POSITION = "SELECT change_seq FROM _cdpd_profiles_positions WHERE warehouse = ?"
UPSERT_PROFILES_POSITION = """INSERT INTO _cdpd_profiles_positions (warehouse, change_seq,
    updated_at) VALUES (?, ?, ?) ON CONFLICT (warehouse) DO UPDATE
    SET change_seq = excluded.change_seq, updated_at = excluded.updated_at"""
SELECT_COLUMNS = """SELECT m.name, p.name, p.type FROM sqlite_master AS m
    JOIN pragma_table_info(m.name) AS p WHERE m.type = 'table'"""
SELECT_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
INSERT_SYNC = "INSERT INTO _cdpd_syncs (warehouse, report) VALUES (?, ?)"
SELECT_SYNCS = "SELECT report FROM _cdpd_syncs WHERE warehouse = ? ORDER BY id DESC LIMIT ?"


def table_name(schema: str, table: str) -> str:
    return f"{schema}{SCHEMA_SEPARATOR}{table}"


@asynccontextmanager
async def open_sink(path: Path, warehouse: str) -> AsyncIterator[SqliteSink]:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute(SECURE_DELETE)  # a regulation's deletions leave no bytes behind
        sink = SqliteSink(conn, warehouse)
        async with sink.load():
            for statement in BOOTSTRAP:
                await conn.execute(statement)
        yield sink
    finally:
        await conn.close()


class SqliteSink:
    def __init__(self, conn: aiosqlite.Connection, warehouse: str) -> None:
        self._conn = conn
        self._warehouse = warehouse

    @staticmethod
    def encode_timestamp(moment: datetime) -> str:
        return utc_text(moment)

    @asynccontextmanager
    async def load(self) -> AsyncIterator[SqliteLoad]:
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield SqliteLoad(self._conn, self._warehouse)
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        await self._conn.execute("COMMIT")

    async def position(self) -> int:
        rows = list(await self._conn.execute_fetchall(SELECT_POSITION, (self._warehouse,)))
        return int(rows[0][0]) if rows else 0

    async def profiles_position(self) -> int:
        rows = list(await self._conn.execute_fetchall(SELECT_PROFILES_POSITION, (self._warehouse,)))
        return int(rows[0][0]) if rows else 0

    async def record_sync(self, report: SyncReport) -> None:
        text = msgspec.json.encode(report).decode()
        await self._conn.execute(INSERT_SYNC, (self._warehouse, text))

    async def recent_syncs(self, limit: int) -> list[SyncReport]:
        rows = await self._conn.execute_fetchall(SELECT_SYNCS, (self._warehouse, limit))
        return [msgspec.json.decode(row[0], type=SyncReport) for row in rows]

    async def table_rows(self) -> list[TableRows]:
        counts = []
        for (name,) in await self._conn.execute_fetchall(SELECT_TABLES):
            schema, sep, table = name.partition(SCHEMA_SEPARATOR)
            if not sep or name.startswith("_cdpd"):
                continue
            ((rows,),) = await self._conn.execute_fetchall(f"SELECT count(*) FROM {quote(name)}")
            counts.append(TableRows(schema=schema, table=table, rows=rows))
        return counts

    async def erase_users(self, user_ids: Sequence[str], schemas: Collection[str] | None) -> int:
        """Delete the users' rows (by `user_id`, `users` by `id`) from every table of
        `schemas` (None: all), with the discards of the rows deleted; returns how many."""
        removed = 0
        async with self.load():
            # Each id its own parameter, bound as it is (an id may hold any character).
            await self._conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _cdpd_erased (user_id TEXT PRIMARY KEY)"
            )
            await self._conn.execute("DELETE FROM _cdpd_erased")
            await self._conn.executemany(
                "INSERT OR IGNORE INTO _cdpd_erased VALUES (?)", [(u,) for u in user_ids]
            )
            tables: dict[str, set[str]] = {}
            for name, column, _ in await self._conn.execute_fetchall(SELECT_COLUMNS):
                tables.setdefault(name, set()).add(column)
            for name, columns in sorted(tables.items()):
                schema, sep, table = name.partition(SCHEMA_SEPARATOR)
                if (
                    not sep
                    or table == DISCARDS_TABLE
                    or (schemas is not None and schema not in schemas)
                ):
                    continue
                key = "id" if table == "users" else "user_id" if "user_id" in columns else None
                if key is None:
                    continue
                matching = f"CAST({quote(key)} AS TEXT) IN (SELECT user_id FROM _cdpd_erased)"
                discards = table_name(schema, DISCARDS_TABLE)
                if discards in tables:
                    cursor = await self._conn.execute(
                        f"DELETE FROM {quote(discards)} WHERE table_name = ? AND row_id IN"
                        f" (SELECT id FROM {quote(name)} WHERE {matching})",
                        (table,),
                    )
                    removed += max(cursor.rowcount, 0)
                cursor = await self._conn.execute(f"DELETE FROM {quote(name)} WHERE {matching}")
                removed += max(cursor.rowcount, 0)
            if schemas is None or PROFILES_SCHEMA in schemas:
                removed += await self._erase_profiles(tables)
        return removed

    async def _erase_profiles(self, tables: dict[str, set[str]]) -> int:
        """The Profiles Sync rows of the users' profiles (found by their `user_id`
        identifiers, then every profile merged into them), and every `segment_id` naming
        one of those profiles set to NULL: nothing leads from an event back to the user."""
        await self._conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _cdpd_erased_profiles (id TEXT PRIMARY KEY)"
        )
        await self._conn.execute("DELETE FROM _cdpd_erased_profiles")
        erased = "SELECT user_id FROM _cdpd_erased"
        for table, profile, kind, value in PROFILE_OF_USER:
            if table_name(PROFILES_SCHEMA, table) in tables:
                await self._conn.execute(
                    f"INSERT OR IGNORE INTO _cdpd_erased_profiles SELECT {quote(profile)}"
                    f" FROM {quote(table_name(PROFILES_SCHEMA, table))}"
                    f" WHERE {quote(kind)} = 'user_id' AND {quote(value)} IN ({erased})"
                    f" AND {quote(profile)} IS NOT NULL"
                )
        for table in MERGED_INTO:
            if table_name(PROFILES_SCHEMA, table) in tables:
                await self._conn.execute(
                    "INSERT OR IGNORE INTO _cdpd_erased_profiles SELECT segment_id FROM"
                    f" {quote(table_name(PROFILES_SCHEMA, table))} WHERE canonical_segment_id"
                    " IN (SELECT id FROM _cdpd_erased_profiles) AND segment_id IS NOT NULL"
                )
        await self._erase_merged_history(tables)
        removed = 0
        profiles = "(SELECT id FROM _cdpd_erased_profiles)"
        for name, columns in sorted(tables.items()):
            schema, sep, _ = name.partition(SCHEMA_SEPARATOR)
            keys = [c for c in PROFILE_COLUMNS if c in columns]
            if not sep or not keys:
                continue
            if schema == PROFILES_SCHEMA:
                condition = " OR ".join(f"{quote(k)} IN {profiles}" for k in keys)
                discards = table_name(schema, DISCARDS_TABLE)
                if discards in tables:
                    cursor = await self._conn.execute(
                        f"DELETE FROM {quote(discards)} WHERE table_name = ? AND row_id IN"
                        f" (SELECT id FROM {quote(name)} WHERE {condition})",
                        (name.partition(SCHEMA_SEPARATOR)[2],),
                    )
                    removed += max(cursor.rowcount, 0)
                sql = f"DELETE FROM {quote(name)} WHERE {condition}"
            elif "segment_id" in columns:
                sql = f"UPDATE {quote(name)} SET segment_id = NULL WHERE segment_id IN {profiles}"
            else:
                continue
            cursor = await self._conn.execute(sql)
            removed += max(cursor.rowcount, 0)
        return removed

    async def _erase_merged_history(self, tables: dict[str, set[str]]) -> None:
        """Add the profiles `id_graph_updates` records as merged into an erased one, unless
        `profile_merges` places them elsewhere now (an unmerge split them off)."""
        history = table_name(PROFILES_SCHEMA, MERGE_HISTORY)
        merges = table_name(PROFILES_SCHEMA, "profile_merges")
        if history not in tables:
            return
        elsewhere = (
            f" AND NOT EXISTS (SELECT 1 FROM {quote(merges)} AS m WHERE m.segment_id = g.segment_id"
            " AND m.canonical_segment_id NOT IN (SELECT id FROM _cdpd_erased_profiles))"
            if merges in tables
            else ""
        )
        for _ in range(MERGE_CHAIN_MAX):
            cursor = await self._conn.execute(
                f"INSERT OR IGNORE INTO _cdpd_erased_profiles SELECT g.segment_id"
                f" FROM {quote(history)} AS g WHERE g.canonical_segment_id IN"
                " (SELECT id FROM _cdpd_erased_profiles) AND g.segment_id IS NOT NULL" + elsewhere
            )
            if cursor.rowcount <= 0:
                return

    async def find_users(self, user_ids: Sequence[str]) -> dict[str, int]:
        """Rows of each table with one of the users' ids in any column (a deletion's proof)."""
        await self._conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _cdpd_sought (id TEXT PRIMARY KEY)"
        )
        await self._conn.execute("DELETE FROM _cdpd_sought")
        await self._conn.executemany(
            "INSERT OR IGNORE INTO _cdpd_sought VALUES (?)", [(u,) for u in user_ids]
        )
        tables: dict[str, list[str]] = {}
        for name, column, _ in await self._conn.execute_fetchall(SELECT_COLUMNS):
            tables.setdefault(name, []).append(column)
        found = {}
        for name, columns in sorted(tables.items()):
            condition = " OR ".join(
                f"CAST({quote(c)} AS TEXT) IN (SELECT id FROM _cdpd_sought)" for c in columns
            )
            ((count,),) = await self._conn.execute_fetchall(
                f"SELECT count(*) FROM {quote(name)} WHERE {condition}"
            )
            if count:
                found[name] = int(count)
        return found


class SqliteLoad:
    def __init__(self, conn: aiosqlite.Connection, warehouse: str) -> None:
        self._conn = conn
        self._warehouse = warehouse

    async def position(self) -> int:
        rows = list(await self._conn.execute_fetchall(SELECT_POSITION, (self._warehouse,)))
        return int(rows[0][0]) if rows else 0

    async def set_position(self, seq: int) -> None:
        now = utc_text(datetime.now(UTC))
        await self._conn.execute(UPSERT_POSITION, (self._warehouse, seq, now))

    async def profiles_position(self) -> int:
        rows = list(await self._conn.execute_fetchall(SELECT_PROFILES_POSITION, (self._warehouse,)))
        return int(rows[0][0]) if rows else 0

    async def set_profiles_position(self, change_seq: int) -> None:
        now = utc_text(datetime.now(UTC))
        await self._conn.execute(UPSERT_PROFILES_POSITION, (self._warehouse, change_seq, now))

    async def distinct_values(self, key: TableKey, column: str) -> list[str]:
        name = table_name(*key)
        if not await self._exists(name):
            return []
        rows = await self._conn.execute_fetchall(
            f"SELECT DISTINCT {quote(column)} FROM {quote(name)} WHERE {quote(column)} IS NOT NULL"
        )
        return [str(row[0]) for row in rows]

    async def _exists(self, name: str) -> bool:
        found = await self._conn.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        )
        return bool(list(found))

    async def delete_rows(
        self, key: TableKey, column: str | None, values: Sequence[str] | None
    ) -> int:
        name = table_name(*key)
        if not await self._exists(name):
            return 0
        discards = table_name(key[0], DISCARDS_TABLE)
        has_discards = await self._exists(discards)
        if column is None or values is None:
            if has_discards:
                await self._conn.execute(
                    f"DELETE FROM {quote(discards)} WHERE table_name = ?", (key[1],)
                )
            cursor = await self._conn.execute(f"DELETE FROM {quote(name)}")
            return max(cursor.rowcount, 0)
        if column != "id":
            index = quote(f"{name}__{column}")
            await self._conn.execute(
                f"CREATE INDEX IF NOT EXISTS {index} ON {quote(name)} ({quote(column)})"
            )
        if has_discards:  # a deleted row's discards go with it
            await self._conn.executemany(
                f"DELETE FROM {quote(discards)} WHERE table_name = ? AND row_id IN"
                f" (SELECT id FROM {quote(name)} WHERE {quote(column)} = ?)",
                [(key[1], v) for v in values],
            )
        cursor = await self._conn.executemany(
            f"DELETE FROM {quote(name)} WHERE {quote(column)} = ?", [(v,) for v in values]
        )
        return max(cursor.rowcount, 0)

    async def catalog(self, schemas: Iterable[str]) -> Catalog:
        wanted = set(schemas)
        catalog: Catalog = {}
        for name, column, declared in await self._conn.execute_fetchall(SELECT_COLUMNS):
            schema, sep, table = name.partition(SCHEMA_SEPARATOR)
            if sep and schema in wanted and table != DISCARDS_TABLE:
                column_type = COLUMN_TYPES.get(declared.upper(), ColumnType.STRING)
                catalog.setdefault((schema, table), {})[column] = column_type
        return catalog

    async def apply(self, plan: LoadPlan) -> dict[TableKey, int]:
        written = {}
        for table in plan.tables:
            await self._evolve(table)
            written[(table.schema, table.table)] = await self._write(table)
        await self._discards(plan.discards)
        return written

    async def _evolve(self, table: TablePlan) -> None:
        name = quote(table_name(table.schema, table.table))
        if table.new_table:
            columns = ", ".join(
                f"{quote(c)} {SQL_TYPES[t]}{' PRIMARY KEY NOT NULL' if c == 'id' else ''}"
                for c, t in table.new_columns
            )
            await self._conn.execute(f"CREATE TABLE {name} ({columns})")
            return
        for column, column_type in table.new_columns:
            await self._conn.execute(
                f"ALTER TABLE {name} ADD COLUMN {quote(column)} {SQL_TYPES[column_type]}"
            )

    async def _write(self, table: TablePlan) -> int:
        name = quote(table_name(table.schema, table.table))
        columns = ", ".join(quote(c) for c in table.columns)
        marks = ", ".join("?" * len(table.columns))
        if table.upsert and len(table.columns) > 1:
            merges = ", ".join(
                f"{quote(c)} = coalesce(excluded.{quote(c)}, {quote(c)})" for c in table.columns[1:]
            )
            conflict = f"DO UPDATE SET {merges}"
        else:
            conflict = "DO NOTHING"
        sql = f"INSERT INTO {name} ({columns}) VALUES ({marks}) ON CONFLICT (id) {conflict}"
        cursor = await self._conn.executemany(sql, table.rows())
        return max(cursor.rowcount, 0)

    async def _discards(self, discards: list[Discard]) -> None:
        now = utc_text(datetime.now(UTC))
        for schema in sorted({d.schema for d in discards}):
            name = quote(table_name(schema, DISCARDS_TABLE))
            await self._conn.execute(f"CREATE TABLE IF NOT EXISTS {name} {DISCARDS_COLUMNS}")
            rows = [
                (d.table, d.row_id, d.column, d.value, d.reason, d.received_at, now)
                for d in discards
                if d.schema == schema
            ]
            await self._conn.executemany(INSERT_DISCARD.format(table=name), rows)
