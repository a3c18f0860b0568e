"""The PostgreSQL warehouse: a schema per source, as in Segment; bookkeeping in schema `_cdpd`.

All SQL of this warehouse kind is in this module. Every load is one transaction that first
takes a transaction-level advisory lock, so loads (and the bootstrap DDL) from any number of
processes take turns, and the load position (`_cdpd.positions`) commits with the rows it covers.
Rows of a table that keeps the first row per id go in by COPY straight into the table, less the
ids it already has (looked up first; the load lock keeps other cdpd loads out between the look-up
and the COPY). Rows of `users` and `accounts` go by COPY into a temporary staging table, then
one `INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE` merges them. Identifiers are always
quoted; values are always parameters or COPY data.

Timestamps travel as PostgreSQL's own binary form, microseconds since 2000-01-01 UTC, which the
plan computes once per distinct time: encoding a `datetime` per value costs more than the rest
of a row's COPY encoding.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import compress
from typing import Any

import asyncpg
import msgspec

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
from cdpd.warehouse.sinks.errors import UnusableWarehouse
from cdpd.warehouse.values import ColumnType

LOAD_LOCK_KEY = 0x63647064_77680001  # "cdpdwh" + 1: one lock for every cdpd load in a database
CONNECT_TIMEOUT_S = 10.0
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)

SQL_TYPES = {
    ColumnType.STRING: "text",
    ColumnType.INTEGER: "bigint",
    ColumnType.FLOAT: "double precision",
    ColumnType.BOOLEAN: "boolean",
    ColumnType.TIMESTAMP: "timestamp with time zone",
}
COLUMN_TYPES = {sql: column_type for column_type, sql in SQL_TYPES.items()}

LOCK = "SELECT pg_advisory_xact_lock($1)"
BOOTSTRAP = (
    "CREATE SCHEMA IF NOT EXISTS _cdpd",
    """CREATE TABLE IF NOT EXISTS _cdpd.positions (
        warehouse text PRIMARY KEY, seq bigint NOT NULL, updated_at timestamptz NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS _cdpd.syncs (
        id bigserial PRIMARY KEY, warehouse text NOT NULL, report jsonb NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS _cdpd.profiles_positions (
        warehouse text PRIMARY KEY, change_seq bigint NOT NULL, updated_at timestamptz NOT NULL)""",
)
DISCARDS_COLUMNS = """(
    table_name text NOT NULL, row_id text NOT NULL, column_name text NOT NULL,
    column_value text NOT NULL, reason text NOT NULL, received_at text, uuid_ts timestamptz,
    PRIMARY KEY (table_name, row_id, column_name))"""
INSERT_DISCARD = """INSERT INTO {table} (table_name, row_id, column_name, column_value, reason,
    received_at, uuid_ts) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"""
SELECT_POSITION = "SELECT seq FROM _cdpd.positions WHERE warehouse = $1"
UPSERT_POSITION = """INSERT INTO _cdpd.positions (warehouse, seq, updated_at)
    VALUES ($1, $2, now())
    ON CONFLICT (warehouse) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at"""
SELECT_PROFILES_POSITION = "SELECT change_seq FROM _cdpd.profiles_positions WHERE warehouse = $1"
UPSERT_PROFILES_POSITION = """INSERT INTO _cdpd.profiles_positions (warehouse, change_seq,
    updated_at) VALUES ($1, $2, now()) ON CONFLICT (warehouse) DO UPDATE
    SET change_seq = excluded.change_seq, updated_at = excluded.updated_at"""
SELECT_COLUMNS = """SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute AS a
    JOIN pg_class AS c ON c.oid = a.attrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p')
      AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY n.nspname, c.relname, a.attnum"""
SELECT_TABLES = """SELECT table_schema, table_name FROM information_schema.tables
    WHERE table_type = 'BASE TABLE'
      AND table_schema NOT IN ('pg_catalog', 'information_schema', '_cdpd')
      AND table_schema NOT LIKE 'pg\\_%'
    ORDER BY 1, 2"""
# The tables holding user ids: `users` by its id, the others by their user_id column.
SELECT_USER_KEYED = """SELECT table_schema, table_name,
        CASE WHEN table_name = 'users' THEN 'id' ELSE 'user_id' END
    FROM information_schema.columns
    WHERE column_name = CASE WHEN table_name = 'users' THEN 'id' ELSE 'user_id' END
      AND table_schema NOT IN ('pg_catalog', 'information_schema', '_cdpd')
      AND table_schema NOT LIKE 'pg\\_%'
      AND (table_schema, table_name) IN (SELECT table_schema, table_name
          FROM information_schema.tables WHERE table_type = 'BASE TABLE')
    ORDER BY 1, 2"""
SELECT_ALL_COLUMNS = """SELECT c.table_schema, c.table_name, c.column_name
    FROM information_schema.columns AS c JOIN information_schema.tables AS t
      ON t.table_schema = c.table_schema AND t.table_name = c.table_name
    WHERE t.table_type = 'BASE TABLE'
      AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
      AND c.table_schema NOT LIKE 'pg\\_%'
    ORDER BY c.table_schema, c.table_name, c.ordinal_position"""
INSERT_SYNC = "INSERT INTO _cdpd.syncs (warehouse, report) VALUES ($1, $2::jsonb)"
SELECT_SYNCS = "SELECT report::text FROM _cdpd.syncs WHERE warehouse = $1 ORDER BY id DESC LIMIT $2"
STAGE = "CREATE TEMPORARY TABLE {stage} ({columns}) ON COMMIT DROP"
INSERT_FROM_STAGE = (
    "INSERT INTO {table} AS t ({columns}) SELECT {columns} FROM {stage} ON CONFLICT (id) {action}"
)
SELECT_EXISTING_IDS = "SELECT id FROM {table} WHERE id = ANY($1::text[])"


def redacted(dsn: str) -> str:
    """The DSN without its password, for logs and status output."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)


@asynccontextmanager
async def open_sink(dsn: str, warehouse: str) -> AsyncIterator[PostgresSink]:
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        encoding = await conn.fetchval("SHOW server_encoding")
        if encoding != "UTF8":
            # Any text could be refused then, and not one message but the warehouse is at fault.
            raise UnusableWarehouse(
                f"the database's encoding is {encoding}; cdpd loads only into UTF8 databases"
                " (CREATE DATABASE ... ENCODING 'UTF8')"
            )
        await conn.set_type_codec(
            "timestamptz",
            schema="pg_catalog",
            encoder=_timestamp_wire,
            decoder=_timestamp_from_wire,
            format="tuple",
        )
        sink = PostgresSink(conn, warehouse)
        async with sink.load():
            for statement in BOOTSTRAP:
                await conn.execute(statement)
        yield sink
    finally:
        await _close(conn)


async def _close(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError):
        conn.terminate()


def encode_timestamp(moment: datetime) -> int:
    """A timestamptz as PostgreSQL stores it: microseconds since its epoch."""
    return (moment - PG_EPOCH) // ONE_MICROSECOND


def _timestamp_wire(value: int | datetime) -> tuple[int]:
    """asyncpg's tuple form of a timestamptz, from the plan's integers (or a datetime)."""
    if isinstance(value, datetime):
        return (encode_timestamp(value),)
    return (value,)


def _timestamp_from_wire(value: tuple[int]) -> datetime:
    return PG_EPOCH + value[0] * ONE_MICROSECOND


class PostgresSink:
    def __init__(self, conn: asyncpg.Connection, warehouse: str) -> None:
        self._conn = conn
        self._warehouse = warehouse

    @staticmethod
    def encode_timestamp(moment: datetime) -> Any:
        return encode_timestamp(moment)

    @asynccontextmanager
    async def load(self) -> AsyncIterator[PostgresLoad]:
        try:
            async with self._conn.transaction():
                await self._conn.execute(LOCK, LOAD_LOCK_KEY)
                yield PostgresLoad(self._conn, self._warehouse)
        except asyncio.CancelledError:
            # The connection may be mid-statement; closing it is the sure way to roll back.
            self._conn.terminate()
            raise

    async def position(self) -> int:
        seq = await self._conn.fetchval(SELECT_POSITION, self._warehouse)
        return int(seq or 0)

    async def profiles_position(self) -> int:
        change_seq = await self._conn.fetchval(SELECT_PROFILES_POSITION, self._warehouse)
        return int(change_seq or 0)

    async def record_sync(self, report: SyncReport) -> None:
        text = msgspec.json.encode(report).decode()
        await self._conn.execute(INSERT_SYNC, self._warehouse, text)

    async def recent_syncs(self, limit: int) -> list[SyncReport]:
        rows = await self._conn.fetch(SELECT_SYNCS, self._warehouse, limit)
        return [msgspec.json.decode(row[0], type=SyncReport) for row in rows]

    async def table_rows(self) -> list[TableRows]:
        counts = []
        for schema, table in await self._conn.fetch(SELECT_TABLES):
            rows = await self._conn.fetchval(f"SELECT count(*) FROM {_name(schema, table)}")
            counts.append(TableRows(schema=schema, table=table, rows=rows))
        return counts

    async def erase_users(self, user_ids: Sequence[str], schemas: Collection[str] | None) -> int:
        """Delete the users' rows (by `user_id`, `users` by `id`) from every table of
        `schemas` (None: all), with the discards of the rows deleted; returns how many."""
        removed = 0
        async with self.load():
            for schema, table, key in await self._conn.fetch(SELECT_USER_KEYED):
                if table == DISCARDS_TABLE or (schemas is not None and schema not in schemas):
                    continue
                matching = f"{quote(key)}::text = ANY($1::text[])"
                if await self._has_discards(schema):
                    status = await self._conn.execute(
                        f"DELETE FROM {_name(schema, DISCARDS_TABLE)} WHERE table_name = $2"
                        f" AND row_id IN (SELECT id::text FROM {_name(schema, table)}"
                        f" WHERE {matching})",
                        list(user_ids),
                        table,
                    )
                    removed += _count(status)
                status = await self._conn.execute(
                    f"DELETE FROM {_name(schema, table)} WHERE {matching}", list(user_ids)
                )
                removed += _count(status)
            if schemas is None or PROFILES_SCHEMA in schemas:
                removed += await self._erase_profiles(user_ids)
        return removed

    async def _merged_history(
        self, profiles: set[str], columns: dict[tuple[str, str], set[str]]
    ) -> set[str]:
        """The profiles `id_graph_updates` records as merged into one of `profiles`, unless
        `profile_merges` places them elsewhere now (an unmerge split them off)."""
        if (PROFILES_SCHEMA, MERGE_HISTORY) not in columns:
            return set()
        placed = (PROFILES_SCHEMA, "profile_merges") in columns
        found: set[str] = set()
        for _ in range(MERGE_CHAIN_MAX):
            erased = sorted(profiles | found)
            elsewhere = (
                f" AND NOT EXISTS (SELECT 1 FROM {_name(PROFILES_SCHEMA, 'profile_merges')} AS m"
                " WHERE m.segment_id = g.segment_id"
                " AND NOT (m.canonical_segment_id::text = ANY($1::text[])))"
                if placed
                else ""
            )
            more = {
                row[0]
                for row in await self._conn.fetch(
                    f"SELECT g.segment_id FROM {_name(PROFILES_SCHEMA, MERGE_HISTORY)} AS g"
                    " WHERE g.canonical_segment_id::text = ANY($1::text[])"
                    " AND g.segment_id IS NOT NULL" + elsewhere,
                    erased,
                )
            } - set(erased)
            if not more:
                break
            found |= more
        return found

    async def _erase_profiles(self, user_ids: Sequence[str]) -> int:
        """The Profiles Sync rows of the users' profiles (found by their `user_id`
        identifiers, then every profile merged into them), and every `segment_id` naming
        one of those profiles set to NULL: nothing leads from an event back to the user."""
        columns: dict[tuple[str, str], set[str]] = {}
        for schema, table, column in await self._conn.fetch(SELECT_ALL_COLUMNS):
            columns.setdefault((schema, table), set()).add(column)
        profiles: set[str] = set()
        for table, profile, kind, value in PROFILE_OF_USER:
            if (PROFILES_SCHEMA, table) in columns:
                profiles.update(
                    row[0]
                    for row in await self._conn.fetch(
                        f"SELECT {quote(profile)} FROM {_name(PROFILES_SCHEMA, table)}"
                        f" WHERE {quote(kind)} = 'user_id'"
                        f" AND {quote(value)}::text = ANY($1::text[])"
                        f" AND {quote(profile)} IS NOT NULL",
                        list(user_ids),
                    )
                )
        for table in MERGED_INTO:
            if (PROFILES_SCHEMA, table) in columns and profiles:
                profiles.update(
                    row[0]
                    for row in await self._conn.fetch(
                        f"SELECT segment_id FROM {_name(PROFILES_SCHEMA, table)}"
                        " WHERE canonical_segment_id = ANY($1::text[])"
                        " AND segment_id IS NOT NULL",
                        sorted(profiles),
                    )
                )
        if not profiles:
            return 0
        profiles |= await self._merged_history(profiles, columns)
        removed = 0
        for (schema, table), names in sorted(columns.items()):
            keys = [c for c in PROFILE_COLUMNS if c in names]
            if not keys:
                continue
            if schema == PROFILES_SCHEMA:
                condition = " OR ".join(f"{quote(k)}::text = ANY($1::text[])" for k in keys)
                if (schema, DISCARDS_TABLE) in columns:
                    removed += _count(
                        await self._conn.execute(
                            f"DELETE FROM {_name(schema, DISCARDS_TABLE)} WHERE table_name = $2"
                            f" AND row_id IN (SELECT id::text FROM {_name(schema, table)}"
                            f" WHERE {condition})",
                            sorted(profiles),
                            table,
                        )
                    )
                sql = f"DELETE FROM {_name(schema, table)} WHERE {condition}"
            elif "segment_id" in names:
                sql = (
                    f"UPDATE {_name(schema, table)} SET segment_id = NULL"
                    " WHERE segment_id::text = ANY($1::text[])"
                )
            else:
                continue
            removed += _count(await self._conn.execute(sql, sorted(profiles)))
        return removed

    async def find_users(self, user_ids: Sequence[str]) -> dict[str, int]:
        """Rows of each table with one of the users' ids in any column (a deletion's proof)."""
        columns: dict[tuple[str, str], list[str]] = {}
        for schema, table, column in await self._conn.fetch(SELECT_ALL_COLUMNS):
            columns.setdefault((schema, table), []).append(column)
        found = {}
        for (schema, table), names in sorted(columns.items()):
            condition = " OR ".join(f"{quote(c)}::text = ANY($1::text[])" for c in names)
            count = await self._conn.fetchval(
                f"SELECT count(*) FROM {_name(schema, table)} WHERE {condition}", list(user_ids)
            )
            if count:
                found[f"{schema}.{table}"] = int(count)
        return found

    async def _has_discards(self, schema: str) -> bool:
        found = await self._conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", _name(schema, DISCARDS_TABLE)
        )
        return bool(found)


def _count(status: str) -> int:
    """The row count of a command's status (`DELETE 3`)."""
    return int(status.rsplit(" ", 1)[-1])


def _name(schema: str, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}"


class PostgresLoad:
    def __init__(self, conn: asyncpg.Connection, warehouse: str) -> None:
        self._conn = conn
        self._warehouse = warehouse

    async def position(self) -> int:
        seq = await self._conn.fetchval(SELECT_POSITION, self._warehouse)
        return int(seq or 0)

    async def set_position(self, seq: int) -> None:
        await self._conn.execute(UPSERT_POSITION, self._warehouse, seq)

    async def profiles_position(self) -> int:
        change_seq = await self._conn.fetchval(SELECT_PROFILES_POSITION, self._warehouse)
        return int(change_seq or 0)

    async def set_profiles_position(self, change_seq: int) -> None:
        await self._conn.execute(UPSERT_PROFILES_POSITION, self._warehouse, change_seq)

    async def distinct_values(self, key: TableKey, column: str) -> list[str]:
        name = _name(*key)
        if not await self._conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
            return []
        rows = await self._conn.fetch(
            f"SELECT DISTINCT {quote(column)}::text FROM {name} WHERE {quote(column)} IS NOT NULL"
        )
        return [row[0] for row in rows]

    async def delete_rows(
        self, key: TableKey, column: str | None, values: Sequence[str] | None
    ) -> int:
        name = _name(*key)
        if not await self._conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
            return 0
        discards = _name(key[0], DISCARDS_TABLE)
        has_discards = await self._conn.fetchval("SELECT to_regclass($1) IS NOT NULL", discards)
        if column is None or values is None:
            if has_discards:
                await self._conn.execute(f"DELETE FROM {discards} WHERE table_name = $1", key[1])
            return _count(await self._conn.execute(f"DELETE FROM {name}"))
        if column != "id":
            index = quote(f"{key[1]}__{column}")
            await self._conn.execute(
                f"CREATE INDEX IF NOT EXISTS {index} ON {name} ({quote(column)})"
            )
        if has_discards:  # a deleted row's discards go with it
            await self._conn.execute(
                f"DELETE FROM {discards} WHERE table_name = $1 AND row_id IN"
                f" (SELECT id::text FROM {name} WHERE {quote(column)} = ANY($2::text[]))",
                key[1],
                list(values),
            )
        return _count(
            await self._conn.execute(
                f"DELETE FROM {name} WHERE {quote(column)} = ANY($1::text[])", list(values)
            )
        )

    async def catalog(self, schemas: Iterable[str]) -> Catalog:
        catalog: Catalog = {}
        for schema, table, column, sql_type in await self._conn.fetch(
            SELECT_COLUMNS, sorted(set(schemas))
        ):
            if table != DISCARDS_TABLE:
                column_type = COLUMN_TYPES.get(sql_type, ColumnType.STRING)
                catalog.setdefault((schema, table), {})[column] = column_type
        return catalog

    async def apply(self, plan: LoadPlan) -> dict[TableKey, int]:
        for schema in sorted({t.schema for t in plan.tables if t.new_table}):
            await self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        written = {}
        for number, table in enumerate(plan.tables):
            await self._evolve(table)
            written[(table.schema, table.table)] = await self._write(table, f"_cdpd_stage_{number}")
        await self._discards(plan.discards)
        return written

    async def _evolve(self, table: TablePlan) -> None:
        name = _name(table.schema, table.table)
        if table.new_table:
            columns = ", ".join(
                f"{quote(c)} {SQL_TYPES[t]}{' PRIMARY KEY' if c == 'id' else ''}"
                for c, t in table.new_columns
            )
            await self._conn.execute(f"CREATE TABLE {name} ({columns})")
        elif table.new_columns:
            additions = ", ".join(
                f"ADD COLUMN IF NOT EXISTS {quote(c)} {SQL_TYPES[t]}" for c, t in table.new_columns
            )
            await self._conn.execute(f"ALTER TABLE {name} {additions}")

    async def _write(self, table: TablePlan, stage: str) -> int:
        if not table.ids():
            return 0
        if table.upsert:
            return await self._merge(table, stage)
        return await self._append(table)

    async def _append(self, table: TablePlan) -> int:
        """Rows with an id the table does not have yet; a new table has none."""
        ids = table.ids()
        rows: Iterable[tuple[Any, ...]] = table.rows()
        count = len(ids)
        if not table.new_table:
            name = _name(table.schema, table.table)
            found = await self._conn.fetch(SELECT_EXISTING_IDS.format(table=name), ids)
            if found:
                existing = {record[0] for record in found}
                rows = compress(rows, [row_id not in existing for row_id in ids])
                count -= len(existing)
        if count:
            await self._conn.copy_records_to_table(
                table.table, schema_name=table.schema, records=rows, columns=table.columns
            )
        return count

    async def _merge(self, table: TablePlan, stage: str) -> int:
        """Rows merged into the rows with their id: a non-null value replaces the stored one."""
        definitions = ", ".join(
            f"{quote(c)} {SQL_TYPES[t]}" for c, t in zip(table.columns, table.types, strict=True)
        )
        await self._conn.execute(STAGE.format(stage=quote(stage), columns=definitions))
        await self._conn.copy_records_to_table(stage, records=table.rows(), columns=table.columns)
        columns = ", ".join(quote(c) for c in table.columns)
        if len(table.columns) > 1:
            merges = ", ".join(
                f"{quote(c)} = coalesce(excluded.{quote(c)}, t.{quote(c)})"
                for c in table.columns[1:]
            )
            action = f"DO UPDATE SET {merges}"
        else:
            action = "DO NOTHING"
        status = await self._conn.execute(
            INSERT_FROM_STAGE.format(
                table=_name(table.schema, table.table),
                columns=columns,
                stage=quote(stage),
                action=action,
            )
        )
        return int(status.rsplit(" ", 1)[-1])

    async def _discards(self, discards: list[Discard]) -> None:
        now = datetime.now(UTC)
        for schema in sorted({d.schema for d in discards}):
            await self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
            name = _name(schema, DISCARDS_TABLE)
            await self._conn.execute(f"CREATE TABLE IF NOT EXISTS {name} {DISCARDS_COLUMNS}")
            rows = [
                (d.table, d.row_id, d.column, d.value, d.reason, d.received_at, now)
                for d in discards
                if d.schema == schema
            ]
            await self._conn.executemany(INSERT_DISCARD.format(table=name), rows)
