"""Engage's store: its own SQLite file (tables.py) behind an async face. One thread owns the
only connection and runs each operation, a whole batch in one transaction, so the event loop
never waits on SQLite and a crash leaves a profile's state, values and changes consistent.

The identity stage drives `apply_many` (`(profile_id, message, source)` in order) and
`merge`/`forget`; a timer drives `recheck_due` (windows rolling forward); operators read
`summary`, `values` and `changes`. Each operation returns the changes it recorded, numbered
by their `seq` in `engage_changes`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cdpd.engage import catalog as catalogs
from cdpd.engage import syncs
from cdpd.engage.catalog import Catalog
from cdpd.engage.evaluation import Stream
from cdpd.engage.inputs import Input, ProfileMessage, ProfilesMerged
from cdpd.engage.state import ProfileState
from cdpd.engage.tables import Collection, Recorded, Summary, Tables, create, transaction

T = TypeVar("T")

__all__ = ["EngageStore", "Recorded", "Summary"]


class EngageStore:
    def __init__(self, tables: Tables, executor: ThreadPoolExecutor, path: Path) -> None:
        self._tables = tables
        self._executor = executor
        self.path = path
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> EngageStore:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engage-store")

        def connect() -> Tables:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                create(conn, str(path))
            except BaseException:
                conn.close()
                raise
            return Tables(conn)

        try:
            tables = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(tables, executor, path)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._run(self._tables.conn.close)
        self._executor.shutdown(wait=True)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    @property
    def catalog(self) -> Catalog:
        return self._tables.catalog

    def use(self, catalog: Catalog) -> None:
        """Evaluate with these definitions from now on (profiles catch up as they are
        touched, rechecked or recomputed)."""
        self._tables.catalog = catalog

    async def register(self, sources: Iterable[catalogs.Source], now_ms: int) -> dict[str, int]:
        """Record definitions not seen before (created now) and return every definition's
        creation time: a definition without history counts events from then on."""
        return await self._run(self._tables.register, list(sources), now_ms)

    async def apply(
        self, profile_id: str, message: dict[str, Any], now_ms: int, *, source: str = ""
    ) -> list[Recorded]:
        return await self.apply_many([(profile_id, message, source)], now_ms)

    async def apply_many(
        self, inputs: Iterable[tuple[str, dict[str, Any], str]], now_ms: int
    ) -> list[Recorded]:
        """Messages in order, in one transaction; each profile is evaluated once, after its
        last message of the batch."""
        return await self._run(self._tables.apply_many, list(inputs), now_ms)

    async def process(
        self, inputs: list[Input], now_ms: int, *, position: dict[str, int] | None = None
    ) -> list[Recorded]:
        """The identity stage's output in order: runs of messages are applied as one batch,
        merges and deletions between them in their place; all of it, and `position` (into
        `engage_position`), in one transaction, so a crash never applies anything twice."""
        return await self._run(self._process, inputs, now_ms, position or {})

    def _process(
        self, inputs: list[Input], now_ms: int, position: dict[str, int]
    ) -> list[Recorded]:
        tables = self._tables
        recorded: list[Recorded] = []
        run: list[tuple[str, dict[str, Any], str]] = []
        with transaction(tables.conn):
            for item in inputs:
                if isinstance(item, ProfileMessage):
                    run.append((item.profile_id, item.message, item.source))
                    continue
                if run:
                    recorded += tables.apply_many(run, now_ms)
                    run = []
                if isinstance(item, ProfilesMerged):
                    recorded += tables.merge(item.from_profile, item.into_profile, now_ms)
                else:
                    tables.forget(item.profile_id)
            if run:
                recorded += tables.apply_many(run, now_ms)
            tables.conn.executemany(
                "INSERT INTO engage_position (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                sorted(position.items()),
            )
        return recorded

    async def backfill(
        self,
        inputs: list[ProfileMessage],
        now_ms: int,
        by_event: dict[str, tuple[Stream, ...]],
        *,
        first: bool,
    ) -> list[Recorded]:
        """Archived messages into the streams of new `historical` definitions only."""
        rows = [(i.profile_id, i.message, i.source) for i in inputs]
        return await self._run(self._tables.backfill, rows, now_ms, by_event, first)

    async def position(self) -> dict[str, int]:
        """Where `process` left off (`engage_position`)."""
        return await self._run(self._tables.position)

    async def merge(self, from_profile: str, into_profile: str, now_ms: int) -> list[Recorded]:
        """Two profiles became one: `into_profile` keeps both states and `from_profile` goes.
        A membership either had counts as held, so only real changes are recorded."""
        return await self._run(self._tables.merge, from_profile, into_profile, now_ms)

    async def forget(self, profile_id: str) -> None:
        """Remove a profile and everything about it (a deletion); nothing is sent about it."""
        await self._run(self._tables.forget, profile_id)

    async def recheck_due(self, now_ms: int, *, limit: int = 1000) -> list[Recorded]:
        """Evaluate up to `limit` profiles whose values may have changed with time alone."""
        return await self._run(self._tables.recheck_due, now_ms, limit)

    async def recompute_all(self, now_ms: int, *, batch: int = 1000) -> list[Recorded]:
        """Evaluate every profile (new definitions, the batch schedule)."""
        return await self._run(self._tables.recompute_all, now_ms, batch)

    async def sync_due(self, key: str, destination: str, *, limit: int = 1000) -> syncs.Due:
        """What to send next of a definition to one destination (a page of its first sync,
        or the changes after the last sync); `mark_synced` records it as handed on."""
        definition = self.catalog.get(key)
        if definition is None:
            raise KeyError(key)
        collection: Collection = "accounts" if definition.plan.account else "users"
        return await self._run(
            syncs.due,
            self._tables.conn,
            key,
            definition.source.kind,
            destination,
            limit,
            collection,
        )

    async def mark_synced(
        self, key: str, destination: str, position: tuple[int, str | None], now_ms: int
    ) -> None:
        await self._run(self._in_transaction, syncs.mark, key, destination, position, now_ms)

    async def resync(self, key: str, destination: str) -> bool:
        """The next sync of the definition to the destination sends every member again."""
        return await self._run(self._in_transaction, syncs.forget, key, destination)

    def _in_transaction(self, function: Callable[..., T], *args: Any) -> T:
        conn = self._tables.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = function(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def profile(self, profile_id: str) -> ProfileState | None:
        return await self._run(self._tables.profile, profile_id)

    async def values(self, row_id: str, collection: Collection = "users") -> dict[str, Any]:
        return await self._run(self._tables.values, row_id, collection)

    async def values_since(self, profile_id: str) -> dict[str, tuple[Any, int]]:
        """A profile's memberships and computed values, with when each took its value."""
        return await self._run(self._tables.values_since, profile_id)

    async def changes(self, key: str, *, after_seq: int = 0, limit: int = 1000) -> list[Recorded]:
        return await self._run(self._tables.changes, key, after_seq, limit)

    async def summary(self, key: str) -> Summary | None:
        return await self._run(self._tables.summary, key)
