"""Engage's own SQLite file: each profile's state and current values, the log of changes, and
the operations the identity stage drives (`apply`, `merge`, `forget`), the clock drives
(`recheck_due`: windows rolling forward) and an operator asks for (`preview`, `summary`).

Tables (README.md, "Engage", documents them; schema version 1 in `PRAGMA user_version`):

    engage_definitions  key, kind, query, created_at_ms, computed_at_ms
    engage_profiles     profile_id, state (msgpack), recheck_at_ms, updated_at_ms
    engage_accounts     group_id, state (msgpack), updated_at_ms
    engage_links        group_id, profile_id: which profiles belong to an account
    engage_values       collection, key, id, value (JSON), since_ms: current audience
                        members (value true) and computed trait values
    engage_changes      seq, collection, key, id, change, value, previous, at_ms: every
                        entry, exit and new value, in order (what is sent to destinations)

One connection writes; each operation is one transaction, so a crash leaves a profile's state,
values and changes consistent with each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import msgspec

from cdpd.engage import catalog as catalogs
from cdpd.engage.catalog import Catalog, Change
from cdpd.engage.state import AccountState, ProfileState, apply, merge, set_traits, timestamp_ms

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE engage_definitions (
    key            TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    query          TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    computed_at_ms INTEGER
);
CREATE TABLE engage_profiles (
    profile_id    TEXT PRIMARY KEY,
    state         BLOB NOT NULL,
    recheck_at_ms INTEGER,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX engage_profiles_recheck ON engage_profiles (recheck_at_ms)
    WHERE recheck_at_ms IS NOT NULL;
CREATE TABLE engage_accounts (
    group_id      TEXT PRIMARY KEY,
    state         BLOB NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE engage_links (
    group_id   TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    PRIMARY KEY (group_id, profile_id)
) WITHOUT ROWID;
CREATE INDEX engage_links_profile ON engage_links (profile_id);
CREATE TABLE engage_values (
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    id         TEXT NOT NULL,
    value      TEXT NOT NULL,
    since_ms   INTEGER NOT NULL,
    PRIMARY KEY (collection, key, id)
) WITHOUT ROWID;
CREATE INDEX engage_values_id ON engage_values (collection, id);
CREATE TABLE engage_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    id         TEXT NOT NULL,
    change     TEXT NOT NULL,
    value      TEXT,
    previous   TEXT,
    at_ms      INTEGER NOT NULL
);
CREATE INDEX engage_changes_key ON engage_changes (key, seq);
"""
Collection = Literal["users", "accounts"]

_encode_state = msgspec.msgpack.Encoder().encode
decode_profile = msgspec.msgpack.Decoder(ProfileState).decode
decode_account = msgspec.msgpack.Decoder(AccountState).decode
_json = msgspec.json.Encoder(order="sorted").encode


class Recorded(msgspec.Struct, frozen=True):
    """A change as stored: its sequence number names it (the `change_id` of its messages)."""

    seq: int
    collection: Collection
    id: str
    change: Change


class Summary(msgspec.Struct, frozen=True):
    key: str
    kind: str
    query: str
    created_at_ms: int
    computed_at_ms: int | None
    size: int
    entries: int
    exits: int
    computed: int
    last_change_at_ms: int | None


class EngageStore:
    """The store over one open connection; `open()` creates the file and its tables."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._catalog: Catalog = catalogs.build([])
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> EngageStore:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA busy_timeout = 5000")
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else 0
        if version == 0:
            await conn.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = 1; COMMIT;")
        elif version != SCHEMA_VERSION:
            await conn.close()
            raise RuntimeError(f"{path}: Engage schema version {version} is newer than this cdpd")
        return cls(conn, path)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._conn.close()

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    async def register(self, sources: Iterable[catalogs.Source], now_ms: int) -> dict[str, int]:
        """Record definitions not seen before (their creation time is now) and return every
        definition's creation time, which a definition without history counts events from."""
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            for source in sources:
                await self._conn.execute(
                    "INSERT INTO engage_definitions (key, kind, query, created_at_ms) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET query = excluded.query",
                    (source.key, source.kind, source.query, now_ms),
                )
            await self._conn.execute("COMMIT")
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        async with self._conn.execute("SELECT key, created_at_ms FROM engage_definitions") as cur:
            return {key: created for key, created in await cur.fetchall()}

    def use(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def apply(
        self, profile_id: str, message: dict[str, Any], now_ms: int, *, source: str = ""
    ) -> list[Recorded]:
        """One message of a profile: its state, values and changes, in one transaction."""
        return await self.apply_many([(profile_id, message, source)], now_ms)

    async def apply_many(
        self, inputs: Iterable[tuple[str, dict[str, Any], str]], now_ms: int
    ) -> list[Recorded]:
        """Messages as the identity stage emits them, `(profile_id, message, source)`, in one
        transaction; each profile is evaluated once, after its last message of the batch."""
        async with _Transaction(self._conn):
            states: dict[str, ProfileState] = {}
            before: dict[str, dict[str, Any]] = {}
            accounts: set[str] = set()
            for profile_id, message, source in inputs:
                state = states.get(profile_id)
                if state is None:
                    state = await self._load_profile(profile_id)
                    states[profile_id] = state
                    before[profile_id] = dict(state.values)
                groups = len(state.groups)
                apply(state, message, self._catalog.by_event, now_ms, source=source)
                if message.get("type") == "group":
                    group_id = str(message.get("groupId") or "")
                    if group_id:
                        await self._update_account(group_id, message, now_ms)
                        accounts.add(group_id)
                for group_id in state.groups[groups:]:
                    await self._conn.execute(
                        "INSERT OR IGNORE INTO engage_links (group_id, profile_id) VALUES (?, ?)",
                        (group_id, profile_id),
                    )
                accounts.update(state.groups)
            recorded = []
            for profile_id, state in states.items():
                recorded += await self._evaluate_profile(
                    profile_id, state, before[profile_id], now_ms
                )
            for group_id in sorted(accounts):
                recorded += await self._evaluate_account(group_id, now_ms)
            return recorded

    async def merge(self, from_profile: str, into_profile: str, now_ms: int) -> list[Recorded]:
        """Two profiles became one (Unify merged them): `into_profile` keeps both states;
        `from_profile` disappears with its values. A membership either profile had counts as
        held before, so only real changes of the merged profile are recorded."""
        if from_profile == into_profile:
            return []
        async with _Transaction(self._conn):
            into = await self._load_profile(into_profile)
            other = await self._load_profile(from_profile)
            merged = merge(into, other, self._catalog.streams)
            before = {**other.values, **into.values}
            for key, value in other.values.items():
                if value is True:
                    before[key] = True
            await self._conn.execute(
                "INSERT OR IGNORE INTO engage_links (group_id, profile_id) "
                "SELECT group_id, ? FROM engage_links WHERE profile_id = ?",
                (into_profile, from_profile),
            )
            await self._delete_profile(from_profile)
            recorded = await self._evaluate_profile(into_profile, merged, before, now_ms)
            await self._rewrite_values(into_profile, merged.values, now_ms)
            for group_id in merged.groups:
                recorded += await self._evaluate_account(group_id, now_ms)
            return recorded

    async def forget(self, profile_id: str) -> None:
        """Remove a profile and everything about it (a deletion); nothing is sent about it."""
        async with _Transaction(self._conn):
            await self._delete_profile(profile_id)

    async def recheck_due(self, now_ms: int, *, limit: int = 1000) -> list[Recorded]:
        """Evaluate profiles whose values may have changed with time alone (a window moved
        past their events); returns the changes. Call until it returns fewer than `limit`
        profiles' worth, on a timer."""
        async with self._conn.execute(
            "SELECT profile_id FROM engage_profiles WHERE recheck_at_ms <= ? "
            "ORDER BY recheck_at_ms LIMIT ?",
            (now_ms, limit),
        ) as cursor:
            due = [row[0] for row in await cursor.fetchall()]
        recorded: list[Recorded] = []
        async with _Transaction(self._conn):
            for profile_id in due:
                state = await self._load_profile(profile_id)
                recorded += await self._evaluate_profile(
                    profile_id, state, dict(state.values), now_ms
                )
        return recorded

    async def recompute_all(self, now_ms: int, *, batch: int = 1000) -> list[Recorded]:
        """Evaluate every profile (a new or changed definition, or the batch schedule)."""
        recorded: list[Recorded] = []
        last = ""
        while True:
            async with self._conn.execute(
                "SELECT profile_id FROM engage_profiles WHERE profile_id > ? "
                "ORDER BY profile_id LIMIT ?",
                (last, batch),
            ) as cursor:
                ids = [row[0] for row in await cursor.fetchall()]
            if not ids:
                break
            async with _Transaction(self._conn):
                for profile_id in ids:
                    state = await self._load_profile(profile_id)
                    recorded += await self._evaluate_profile(
                        profile_id, state, dict(state.values), now_ms
                    )
            last = ids[-1]
        await self._conn.execute("UPDATE engage_definitions SET computed_at_ms = ?", (now_ms,))
        return recorded

    async def profile(self, profile_id: str) -> ProfileState | None:
        async with self._conn.execute(
            "SELECT state FROM engage_profiles WHERE profile_id = ?", (profile_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else decode_profile(row[0])

    async def values(self, profile_id: str, collection: Collection = "users") -> dict[str, Any]:
        async with self._conn.execute(
            "SELECT key, value FROM engage_values WHERE collection = ? AND id = ?",
            (collection, profile_id),
        ) as cursor:
            return {key: msgspec.json.decode(value) for key, value in await cursor.fetchall()}

    async def changes(self, key: str, *, after_seq: int = 0, limit: int = 1000) -> list[Recorded]:
        async with self._conn.execute(
            "SELECT seq, collection, id, change, value, previous FROM engage_changes "
            "WHERE key = ? AND seq > ? ORDER BY seq LIMIT ?",
            (key, after_seq, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        definition = self._catalog.get(key)
        kind: catalogs.Kind = definition.source.kind if definition else "audience"
        return [
            Recorded(
                seq,
                collection,
                row_id,
                Change(key, kind, change, _load_json(value), _load_json(previous)),
            )
            for seq, collection, row_id, change, value, previous in rows
        ]

    async def summary(self, key: str) -> Summary | None:
        async with self._conn.execute(
            "SELECT kind, query, created_at_ms, computed_at_ms FROM engage_definitions "
            "WHERE key = ?",
            (key,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        kind, query, created, computed = row
        async with self._conn.execute(
            "SELECT count(*) FROM engage_values WHERE key = ?", (key,)
        ) as cursor:
            (size,) = await cursor.fetchone() or (0,)
        async with self._conn.execute(
            "SELECT change, count(*), max(at_ms) FROM engage_changes WHERE key = ? GROUP BY change",
            (key,),
        ) as cursor:
            counts = {change: (n, at) for change, n, at in await cursor.fetchall()}
        last = max((at for _, at in counts.values()), default=None)
        return Summary(
            key=key,
            kind=kind,
            query=query,
            created_at_ms=created,
            computed_at_ms=computed,
            size=size,
            entries=counts.get("entered", (0, None))[0],
            exits=counts.get("exited", (0, None))[0],
            computed=counts.get("computed", (0, None))[0],
            last_change_at_ms=last,
        )

    async def _load_profile(self, profile_id: str) -> ProfileState:
        state = await self.profile(profile_id)
        return ProfileState() if state is None else state

    async def _evaluate_profile(
        self, profile_id: str, state: ProfileState, before: dict[str, Any], now_ms: int
    ) -> list[Recorded]:
        after = catalogs.evaluate(self._catalog, state, now_ms)
        changes = catalogs.diff(self._catalog, before, after)
        state.values = after
        recheck = catalogs.next_recheck_ms(self._catalog, state, now_ms)
        await self._conn.execute(
            "INSERT INTO engage_profiles (profile_id, state, recheck_at_ms, updated_at_ms) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (profile_id) DO UPDATE SET state = excluded.state, "
            "recheck_at_ms = excluded.recheck_at_ms, updated_at_ms = excluded.updated_at_ms",
            (profile_id, _encode_state(state), recheck, now_ms),
        )
        return await self._record("users", profile_id, changes, now_ms)

    async def _update_account(self, group_id: str, message: dict[str, Any], now_ms: int) -> None:
        account = await self._load_account(group_id)
        set_traits(account, message.get("traits"), timestamp_ms(message, now_ms))
        await self._save_account(group_id, account, now_ms)

    async def _load_account(self, group_id: str) -> AccountState:
        async with self._conn.execute(
            "SELECT state FROM engage_accounts WHERE group_id = ?", (group_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return AccountState() if row is None else decode_account(row[0])

    async def _save_account(self, group_id: str, account: AccountState, now_ms: int) -> None:
        await self._conn.execute(
            "INSERT INTO engage_accounts (group_id, state, updated_at_ms) VALUES (?, ?, ?) "
            "ON CONFLICT (group_id) DO UPDATE SET state = excluded.state, "
            "updated_at_ms = excluded.updated_at_ms",
            (group_id, _encode_state(account), now_ms),
        )

    async def _evaluate_account(self, group_id: str, now_ms: int) -> list[Recorded]:
        if not self._catalog.account_definitions:
            return []
        account = await self._load_account(group_id)
        async with self._conn.execute(
            "SELECT p.state FROM engage_links l JOIN engage_profiles p USING (profile_id) "
            "WHERE l.group_id = ?",
            (group_id,),
        ) as cursor:
            members = [decode_profile(row[0]) for row in await cursor.fetchall()]
        after = catalogs.evaluate_account(self._catalog, account, members, now_ms)
        changes = catalogs.diff(self._catalog, account.values, after)
        account.values = dict(after)
        await self._save_account(group_id, account, now_ms)
        return await self._record("accounts", group_id, changes, now_ms)

    async def _record(
        self, collection: Collection, row_id: str, changes: list[Change], now_ms: int
    ) -> list[Recorded]:
        recorded = []
        for change in changes:
            if (change.kind == "audience" and not change.value) or change.value is None:
                await self._conn.execute(
                    "DELETE FROM engage_values WHERE collection = ? AND key = ? AND id = ?",
                    (collection, change.key, row_id),
                )
            else:
                await self._conn.execute(
                    "INSERT INTO engage_values (collection, key, id, value, since_ms) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (collection, key, id) DO UPDATE SET "
                    "value = excluded.value, since_ms = excluded.since_ms",
                    (collection, change.key, row_id, _json(change.value).decode(), now_ms),
                )
            cursor = await self._conn.execute(
                "INSERT INTO engage_changes (collection, key, id, change, value, previous, at_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    collection,
                    change.key,
                    row_id,
                    change.change,
                    _json(change.value).decode(),
                    _json(change.previous).decode(),
                    now_ms,
                ),
            )
            recorded.append(Recorded(cursor.lastrowid or 0, collection, row_id, change))
        return recorded

    async def _rewrite_values(self, profile_id: str, values: dict[str, Any], now_ms: int) -> None:
        """Make a profile's rows say exactly `values` (after a merge, the rows held are
        `into`'s, though its values may have changed without being a change)."""
        held = await self.values(profile_id)
        for key, value in values.items():
            kind = self._catalog.get(key)
            keep = value is True if kind and kind.source.kind == "audience" else value is not None
            if not keep:
                await self._conn.execute(
                    "DELETE FROM engage_values WHERE collection = 'users' AND key = ? AND id = ?",
                    (key, profile_id),
                )
            elif held.get(key, _MISSING) != value:
                await self._conn.execute(
                    "INSERT INTO engage_values (collection, key, id, value, since_ms) "
                    "VALUES ('users', ?, ?, ?, ?) ON CONFLICT (collection, key, id) DO UPDATE "
                    "SET value = excluded.value",
                    (key, profile_id, _json(value).decode(), now_ms),
                )

    async def _delete_profile(self, profile_id: str) -> None:
        for sql in (
            "DELETE FROM engage_profiles WHERE profile_id = ?",
            "DELETE FROM engage_links WHERE profile_id = ?",
            "DELETE FROM engage_values WHERE collection = 'users' AND id = ?",
        ):
            await self._conn.execute(sql, (profile_id,))


_MISSING = object()


class _Transaction:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def __aenter__(self) -> None:
        await self._conn.execute("BEGIN IMMEDIATE")

    async def __aexit__(self, kind: object, exc: object, tb: object) -> None:
        await self._conn.execute("ROLLBACK" if exc is not None else "COMMIT")


def _load_json(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)
