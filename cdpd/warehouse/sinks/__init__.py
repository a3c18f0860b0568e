"""Warehouse kinds: what the loader needs from each (`Sink`, `Load`), and opening one by config."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

from cdpd.config import Config, PostgresWarehouse, SqliteWarehouse, Warehouse, warehouse_path
from cdpd.warehouse.mapping import TableKey
from cdpd.warehouse.plan import Catalog, LoadPlan
from cdpd.warehouse.report import SyncReport, TableRows


class Load(Protocol):
    """The work of one load transaction; other loads into the same warehouse wait for it."""

    async def position(self) -> int: ...

    async def catalog(self, schemas: Iterable[str]) -> Catalog: ...

    async def apply(self, plan: LoadPlan) -> dict[TableKey, int]: ...

    async def set_position(self, seq: int) -> None: ...

    async def profiles_position(self) -> int:
        """The identity store change Profiles Sync has loaded up to (0 before its first)."""
        ...

    async def set_profiles_position(self, change_seq: int) -> None: ...

    async def distinct_values(self, key: TableKey, column: str) -> list[str]:
        """The distinct non-null values of a column (none when the table does not exist)."""
        ...

    async def delete_rows(
        self, key: TableKey, column: str | None, values: Sequence[str] | None
    ) -> int:
        """Delete the rows of a table whose `column` holds one of `values` (None: every row;
        nothing when the table does not exist yet); the column is indexed the first time."""
        ...


class Sink(Protocol):
    @staticmethod
    def encode_timestamp(moment: datetime) -> Any:
        """A sink's form of a timestamp; a module-level function, so that it pickles."""
        ...

    def load(self) -> AbstractAsyncContextManager[Load]:
        """A transaction holding the warehouse's load lock: committed when the block ends,
        rolled back when it raises (or is cancelled)."""
        ...

    async def position(self) -> int: ...

    async def profiles_position(self) -> int: ...

    async def record_sync(self, report: SyncReport) -> None: ...

    async def recent_syncs(self, limit: int) -> list[SyncReport]: ...

    async def table_rows(self) -> list[TableRows]: ...

    async def erase_users(self, user_ids: Sequence[str], schemas: Collection[str] | None) -> int:
        """A regulation's deletion, in a load transaction: the users' rows from every table
        of `schemas` (None: all), `users` included; returns how many rows went."""
        ...

    async def find_users(self, user_ids: Sequence[str]) -> dict[str, int]:
        """Rows of each table holding one of the users' ids in any column."""
        ...


def target(config: Config, warehouse: Warehouse) -> str:
    """Where a warehouse is, for people: the SQLite path, or the DSN without a password."""
    if isinstance(warehouse, SqliteWarehouse):
        return str(warehouse_path(config, warehouse))
    from cdpd.warehouse.sinks.postgres import redacted

    return redacted(warehouse.dsn)


@asynccontextmanager
async def open_sink(config: Config, warehouse: Warehouse) -> AsyncIterator[Sink]:
    if isinstance(warehouse, PostgresWarehouse):
        from cdpd.warehouse.sinks import postgres

        async with postgres.open_sink(warehouse.dsn, warehouse.name) as pg_sink:
            yield pg_sink
    else:
        from cdpd.warehouse.sinks import sqlite

        path = warehouse_path(config, warehouse)
        async with sqlite.open_sink(path, warehouse.name) as sqlite_sink:
            yield sqlite_sink
