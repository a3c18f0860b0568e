"""Engage's tables in its own SQLite file, and every statement run on them, synchronously: the
store (store.py) runs these on the one thread that owns the write connection, a batch at a
time, so a batch costs one hop between threads whatever its size.

Tables (README.md, "Engage", documents them; schema version 3 in `PRAGMA user_version`):

    engage_definitions  key, kind, query, created_at_ms, computed_at_ms
    engage_profiles     profile_id, state (msgpack: traits, identifiers, accounts, values),
                        recheck_at_ms, updated_at_ms
    engage_buckets      stream_id, profile_id, buckets (msgpack: a stream's hour buckets)
    engage_accounts     group_id, state (msgpack), updated_at_ms
    engage_links        group_id, profile_id: which profiles belong to an account
    engage_values       collection, key, id, value (JSON), since_ms: current audience
                        members (value true) and computed trait values
    engage_changes      seq, collection, key, id, change, value, previous, at_ms: every
                        entry, exit and new value, in order (what is sent to destinations)
    engage_syncs        see syncs.py
    engage_position     name, value: how far the identity stage's records are applied
                        (moved in the same transaction as what they changed)
    engage_sizes, engage_change_days: see sizes.py (kept by triggers)

One connection writes; each operation is one transaction, so a crash leaves a profile's state,
values and changes consistent with each other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import msgspec

from cdpd.engage import catalog as catalogs
from cdpd.engage import sizes
from cdpd.engage.catalog import Catalog, Change, Touched
from cdpd.engage.evaluation import Stream
from cdpd.engage.state import (
    AccountState,
    ProfileState,
    apply,
    event_of,
    merge,
    set_traits,
    timestamp_ms,
)
from cdpd.model.pragmas import SECURE_DELETE

SCHEMA_VERSION = 3
# A batch touches profiles all over the tables and their indexes: a cache that holds the hot
# pages of 100,000 profiles, and checkpoints every ~40 MB of WAL rather than every 4 MB, keep
# a batch from rereading pages and a checkpoint from rewriting the same pages over and over.
CACHE_KIB = 64 * 1024
CHECKPOINT_PAGES = 10_000
# Version 2: where the daemon's Engage stage stands in the identity stage's records.
POSITION = """
CREATE TABLE engage_position (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""
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
CREATE TABLE engage_buckets (
    stream_id  TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    buckets    BLOB NOT NULL,
    PRIMARY KEY (profile_id, stream_id)
) WITHOUT ROWID;
CREATE INDEX engage_buckets_stream ON engage_buckets (stream_id);
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
decode_account = msgspec.msgpack.Decoder(AccountState).decode


class Head(msgspec.Struct, array_like=True):
    """A profile's state without its buckets, traits and values first: a query on traits
    decodes just those two. The buckets are rows of `engage_buckets`, one per stream,
    written only when they change."""

    traits: dict[str, Any]
    values: dict[str, Any]
    trait_times_ms: dict[str, int]
    identifiers: dict[str, list[str]]
    groups: list[str]


decode_head = msgspec.msgpack.Decoder(Head).decode
decode_buckets = msgspec.msgpack.Decoder(dict[int, Any]).decode


def encode_head(state: ProfileState) -> bytes:
    return _encode_state(
        Head(state.traits, state.values, state.trait_times_ms, state.identifiers, state.groups)
    )


def decode_profile(state: bytes) -> ProfileState:
    """A profile's state without its buckets (`Tables` adds them)."""
    head = decode_head(state)
    return ProfileState(
        traits=head.traits,
        trait_times_ms=head.trait_times_ms,
        identifiers=head.identifiers,
        groups=head.groups,
        values=head.values,
    )


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


PROFILE_UPSERT = (
    "INSERT INTO engage_profiles (profile_id, state, recheck_at_ms, updated_at_ms) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (profile_id) DO UPDATE SET state = excluded.state, "
    "recheck_at_ms = excluded.recheck_at_ms, updated_at_ms = excluded.updated_at_ms"
)
ACCOUNT_UPSERT = (
    "INSERT INTO engage_accounts (group_id, state, updated_at_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (group_id) DO UPDATE SET state = excluded.state, "
    "updated_at_ms = excluded.updated_at_ms"
)
VALUE_UPSERT = (
    "INSERT INTO engage_values (collection, key, id, value, since_ms) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (collection, key, id) DO UPDATE SET value = excluded.value, "
    "since_ms = excluded.since_ms"
)
VALUE_DELETE = "DELETE FROM engage_values WHERE collection = ? AND key = ? AND id = ?"
CHANGE_INSERT = (
    "INSERT INTO engage_changes (seq, collection, key, id, change, value, previous, at_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
LINK_INSERT = "INSERT OR IGNORE INTO engage_links (group_id, profile_id) VALUES (?, ?)"
BUCKETS_UPSERT = (
    "INSERT INTO engage_buckets (stream_id, profile_id, buckets) VALUES (?, ?, ?) "
    "ON CONFLICT (profile_id, stream_id) DO UPDATE SET buckets = excluded.buckets"
)
BUCKETS_DELETE = "DELETE FROM engage_buckets WHERE stream_id = ? AND profile_id = ?"
MEMBERS = "SELECT profile_id FROM engage_links WHERE group_id = ?"
_LOAD_CHUNK = 500
_MISSING = object()


def create(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables in a new file, migrate an older one; refuse a file of a newer
    schema."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(SECURE_DELETE)  # a forgotten profile's rows leave no bytes behind
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == 0:
        from cdpd.engage.syncs import SCHEMA as SYNCS  # syncs.py reads these tables

        conn.executescript(
            f"BEGIN; {SCHEMA} {SYNCS} {POSITION} {sizes.SCHEMA}"
            f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )
        return
    if version == 1:
        _add_position(conn)
        version = 2
    if version == 2:
        sizes.add(conn)
    elif version != SCHEMA_VERSION:
        raise RuntimeError(f"{path}: Engage schema version {version} is newer than this cdpd")


def _add_position(conn: sqlite3.Connection) -> None:
    """Migration 1 -> 2: `engage_position`."""
    conn.executescript(f"BEGIN; {POSITION} PRAGMA user_version = 2; COMMIT;")


class Tables:
    """Every operation on the tables, each one transaction, for one catalog of definitions."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.catalog: Catalog = catalogs.build([])
        # The buckets as read in this transaction, so unchanged ones are not written again.
        self._loaded_buckets: dict[tuple[str, str], bytes | None] = {}
        self._loaded_heads: dict[str, tuple[bytes, int | None]] = {}

    def register(self, sources: Iterable[catalogs.Source], now_ms: int) -> dict[str, int]:
        with transaction(self.conn):
            self.conn.executemany(
                "INSERT INTO engage_definitions (key, kind, query, created_at_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET query = excluded.query",
                [(s.key, s.kind, s.query, now_ms) for s in sources],
            )
        rows = self.conn.execute("SELECT key, created_at_ms FROM engage_definitions")
        return {key: created for key, created in rows}

    def apply_many(
        self,
        inputs: list[tuple[str, dict[str, Any], str]],
        now_ms: int,
        by_event: dict[str, tuple[Stream, ...]] | None = None,
    ) -> list[Recorded]:
        """`by_event` narrows which streams the messages feed (a backfill feeds only the
        streams of new definitions); evaluation always uses the whole catalog."""
        streams = self.catalog.by_event if by_event is None else by_event
        with transaction(self.conn):
            states = self._load_profiles({profile_id for profile_id, _, _ in inputs})
            before = {profile_id: state.values for profile_id, state in states.items()}
            touched = {profile_id: Touched() for profile_id in states}
            accounts: set[str] = set()
            links = []
            for profile_id, message, source in inputs:
                state = states[profile_id]
                groups = len(state.groups)
                identifiers = sum(len(v) for v in state.identifiers.values())
                apply(state, message, streams, now_ms, source=source)
                _note(touched[profile_id], message, state, identifiers)
                if message.get("type") == "group" and state.groups:
                    group_id = str(message.get("groupId"))
                    if group_id in state.groups:
                        self._update_account(group_id, message, now_ms)
                links += [(group_id, profile_id) for group_id in state.groups[groups:]]
                accounts.update(state.groups)
            self.conn.executemany(LINK_INSERT, links)
            changes = self._evaluate_profiles(states, before, now_ms, touched)
            account_changes = []
            for group_id in sorted(accounts):
                account_changes += self._evaluate_account(group_id, now_ms)
            changes += account_changes + self._joined(links, account_changes)
            return self._record(changes, now_ms)

    def _joined(
        self, links: list[tuple[str, str]], account_changes: list[tuple[Collection, str, Change]]
    ) -> list[tuple[Collection, str, Change]]:
        """Users newly linked to an account that was already in an account audience: each
        gets the membership. An account that entered in this batch is sent to all its users
        with its entry."""
        if not self.catalog.account_definitions:
            return []
        just_changed = {(group_id, change.key) for _, group_id, change in account_changes}
        joined: list[tuple[Collection, str, Change]] = []
        for group_id, profile_id in links:
            values = self._load_account(group_id).values
            for definition in self.catalog.account_definitions:
                key = definition.key
                if values.get(key) is True and (group_id, key) not in just_changed:
                    joined.append(("users", profile_id, Change(key, "audience", "joined", True)))
        return joined

    def merge(self, from_profile: str, into_profile: str, now_ms: int) -> list[Recorded]:
        if from_profile == into_profile:
            return []
        with transaction(self.conn):
            states = self._load_profiles({from_profile, into_profile})
            into, other = states[into_profile], states[from_profile]
            merged = merge(into, other, self.catalog.streams)
            before = {**other.values, **into.values}
            before.update({key: True for key, value in other.values.items() if value is True})
            self.conn.execute(
                "INSERT OR IGNORE INTO engage_links (group_id, profile_id) "
                "SELECT group_id, ? FROM engage_links WHERE profile_id = ?",
                (into_profile, from_profile),
            )
            self._delete_profile(from_profile)
            changes = self._evaluate_profiles(
                {into_profile: merged}, {into_profile: before}, now_ms
            )
            self._rewrite_values(into_profile, merged.values, now_ms)
            for group_id in merged.groups:
                changes += self._evaluate_account(group_id, now_ms)
            return self._record(changes, now_ms)

    def forget(self, profile_id: str) -> None:
        with transaction(self.conn):
            self._delete_profile(profile_id)

    def recheck_due(self, now_ms: int, limit: int) -> list[Recorded]:
        due = [
            row[0]
            for row in self.conn.execute(
                "SELECT profile_id FROM engage_profiles WHERE recheck_at_ms <= ? "
                "ORDER BY recheck_at_ms LIMIT ?",
                (now_ms, limit),
            )
        ]
        return self._reevaluate(due, now_ms)

    def recompute_all(self, now_ms: int, batch: int) -> list[Recorded]:
        recorded: list[Recorded] = []
        last = ""
        while True:
            ids = [
                row[0]
                for row in self.conn.execute(
                    "SELECT profile_id FROM engage_profiles WHERE profile_id > ? "
                    "ORDER BY profile_id LIMIT ?",
                    (last, batch),
                )
            ]
            if not ids:
                break
            recorded += self._reevaluate(ids, now_ms)
            last = ids[-1]
        with transaction(self.conn):
            self.conn.execute("UPDATE engage_definitions SET computed_at_ms = ?", (now_ms,))
        return recorded

    def backfill(
        self,
        inputs: list[tuple[str, dict[str, Any], str]],
        now_ms: int,
        by_event: dict[str, tuple[Stream, ...]],
        first: bool,
    ) -> list[Recorded]:
        """Feed archived messages to new streams only; the first page empties those streams
        (what an interrupted backfill left), so a backfill can always start again."""
        with transaction(self.conn):
            if first:
                ids = sorted({s.spec.id for items in by_event.values() for s in items})
                self.conn.executemany(
                    "DELETE FROM engage_buckets WHERE stream_id = ?", [(i,) for i in ids]
                )
            return self.apply_many(inputs, now_ms, by_event)

    def position(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT name, value FROM engage_position").fetchall())

    def profile(self, profile_id: str) -> ProfileState | None:
        exists = self.conn.execute(
            "SELECT 1 FROM engage_profiles WHERE profile_id = ?", (profile_id,)
        ).fetchone()
        return None if exists is None else self._load_profiles({profile_id})[profile_id]

    def values(self, row_id: str, collection: Collection) -> dict[str, Any]:
        rows = self.conn.execute(
            "SELECT key, value FROM engage_values WHERE collection = ? AND id = ?",
            (collection, row_id),
        )
        return {key: msgspec.json.decode(value) for key, value in rows}

    def values_since(self, profile_id: str) -> dict[str, tuple[Any, int]]:
        rows = self.conn.execute(
            "SELECT key, value, since_ms FROM engage_values WHERE collection = 'users' AND id = ?",
            (profile_id,),
        )
        return {key: (msgspec.json.decode(value), since) for key, value, since in rows}

    def changes(self, key: str, after_seq: int, limit: int) -> list[Recorded]:
        rows = self.conn.execute(
            "SELECT seq, collection, id, change, value, previous FROM engage_changes "
            "WHERE key = ? AND seq > ? ORDER BY seq LIMIT ?",
            (key, after_seq, limit),
        ).fetchall()
        definition = self.catalog.get(key)
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

    def summary(self, key: str) -> Summary | None:
        row = self.conn.execute(
            "SELECT kind, query, created_at_ms, computed_at_ms FROM engage_definitions "
            "WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        kind, query, created, computed = row
        # Kept as the memberships change (sizes.py): a few rows, whatever the audience's size.
        (size,) = self.conn.execute(
            "SELECT coalesce(max(size), 0) FROM engage_sizes WHERE key = ?", (key,)
        ).fetchone()
        entries, exits, values = self.conn.execute(
            "SELECT coalesce(sum(entered), 0), coalesce(sum(exited), 0),"
            " coalesce(sum(computed), 0) FROM engage_change_days WHERE key = ?",
            (key,),
        ).fetchone()
        last = self.conn.execute(
            "SELECT at_ms FROM engage_changes WHERE key = ? ORDER BY seq DESC LIMIT 1", (key,)
        ).fetchone()
        return Summary(
            key=key,
            kind=kind,
            query=query,
            created_at_ms=created,
            computed_at_ms=computed,
            size=size,
            entries=entries,
            exits=exits,
            computed=values,
            last_change_at_ms=None if last is None else last[0],
        )

    def _reevaluate(self, profile_ids: list[str], now_ms: int) -> list[Recorded]:
        with transaction(self.conn):
            states = self._load_profiles(set(profile_ids))
            before = {profile_id: state.values for profile_id, state in states.items()}
            return self._record(self._evaluate_profiles(states, before, now_ms), now_ms)

    def _load_profiles(self, profile_ids: set[str]) -> dict[str, ProfileState]:
        """The profiles' states (a new one for an unknown id), remembering their buckets as
        read so that `_evaluate_profiles` writes only those that changed."""
        wanted = sorted(profile_ids)
        states: dict[str, ProfileState] = {}
        self._loaded_buckets = {}
        self._loaded_heads = {}
        for start in range(0, len(wanted), _LOAD_CHUNK):
            chunk = wanted[start : start + _LOAD_CHUNK]
            marks = ",".join("?" * len(chunk))
            for profile_id, state, recheck in self.conn.execute(
                "SELECT profile_id, state, recheck_at_ms FROM engage_profiles "
                f"WHERE profile_id IN ({marks})",
                chunk,
            ):
                states[profile_id] = decode_profile(state)
                self._loaded_heads[profile_id] = (state, recheck)
            for profile_id, stream_id, buckets in self.conn.execute(
                "SELECT profile_id, stream_id, buckets FROM engage_buckets "
                f"WHERE profile_id IN ({marks})",
                chunk,
            ):
                profile = states.setdefault(profile_id, ProfileState())
                profile.streams[stream_id] = decode_buckets(buckets)
                self._loaded_buckets[(profile_id, stream_id)] = buckets
        return {profile_id: states.get(profile_id) or ProfileState() for profile_id in wanted}

    def _evaluate_profiles(
        self,
        states: dict[str, ProfileState],
        before: dict[str, dict[str, Any]],
        now_ms: int,
        touched: dict[str, Touched] | None = None,
    ) -> list[tuple[Collection, str, Change]]:
        changes: list[tuple[Collection, str, Change]] = []
        rows, buckets_rows, emptied = [], [], []
        for profile_id, state in states.items():
            after, changed = catalogs.evaluate_changes(
                self.catalog, state, now_ms, touched.get(profile_id) if touched else None
            )
            # Only a key whose value moved can be a change; a merge's `before` is not the
            # state's own values, so there every key is compared.
            keys = changed if before[profile_id] is state.values else None
            changes += [
                ("users", profile_id, c)
                for c in catalogs.diff(self.catalog, before[profile_id], after, keys)
            ]
            state.values = after
            recheck = catalogs.next_recheck_ms(self.catalog, state, now_ms)
            head = encode_head(state)
            if self._loaded_heads.get(profile_id) != (head, recheck):
                rows.append((profile_id, head, recheck, now_ms))
            for stream_id, stream in state.streams.items():
                buckets = _encode_state(stream) if stream else None
                if buckets != self._loaded_buckets.pop((profile_id, stream_id), None):
                    if buckets is None:
                        emptied.append((stream_id, profile_id))
                    else:
                        buckets_rows.append((stream_id, profile_id, buckets))
        emptied += [(stream_id, profile_id) for profile_id, stream_id in self._loaded_buckets]
        self._loaded_buckets = {}
        self.conn.executemany(PROFILE_UPSERT, rows)
        self.conn.executemany(BUCKETS_UPSERT, buckets_rows)
        self.conn.executemany(BUCKETS_DELETE, emptied)
        return changes

    def _update_account(self, group_id: str, message: dict[str, Any], now_ms: int) -> None:
        account = self._load_account(group_id)
        set_traits(account, message.get("traits"), timestamp_ms(message, now_ms))
        self.conn.execute(ACCOUNT_UPSERT, (group_id, _encode_state(account), now_ms))

    def _load_account(self, group_id: str) -> AccountState:
        row = self.conn.execute(
            "SELECT state FROM engage_accounts WHERE group_id = ?", (group_id,)
        ).fetchone()
        return AccountState() if row is None else decode_account(row[0])

    def _evaluate_account(self, group_id: str, now_ms: int) -> list[tuple[Collection, str, Change]]:
        if not self.catalog.account_definitions:
            return []
        account = self._load_account(group_id)
        member_ids = {row[0] for row in self.conn.execute(MEMBERS, (group_id,))}
        saved = self._loaded_buckets, self._loaded_heads
        members = list(self._load_profiles(member_ids).values())
        self._loaded_buckets, self._loaded_heads = saved
        after = catalogs.evaluate_account(self.catalog, account, members, now_ms)
        changes = catalogs.diff(self.catalog, account.values, after)
        account.values = dict(after)
        self.conn.execute(ACCOUNT_UPSERT, (group_id, _encode_state(account), now_ms))
        return [("accounts", group_id, change) for change in changes]

    def _record(self, changes: list[tuple[Collection, str, Change]], now_ms: int) -> list[Recorded]:
        """Log the changes (numbered after the last one: this is the only writer) and keep
        `engage_values` holding the current members and values."""
        if not changes:
            return []
        (last,) = self.conn.execute("SELECT coalesce(max(seq), 0) FROM engage_changes").fetchone()
        recorded = [
            Recorded(last + n, collection, row_id, change)
            for n, (collection, row_id, change) in enumerate(changes, start=1)
        ]
        removed, kept = [], []
        for r in recorded:
            c = r.change
            if c.change == "joined":
                continue  # the membership is the account's, held in its own row
            if (c.kind == "audience" and not c.value) or c.value is None:
                removed.append((r.collection, c.key, r.id))
            else:
                kept.append((r.collection, c.key, r.id, _json(c.value).decode(), now_ms))
        self.conn.executemany(VALUE_DELETE, removed)
        self.conn.executemany(VALUE_UPSERT, kept)
        self.conn.executemany(
            CHANGE_INSERT,
            [
                (
                    r.seq,
                    r.collection,
                    r.change.key,
                    r.id,
                    r.change.change,
                    _json(r.change.value).decode(),
                    _json(r.change.previous).decode(),
                    now_ms,
                )
                for r in recorded
            ],
        )
        return recorded

    def _rewrite_values(self, profile_id: str, values: dict[str, Any], now_ms: int) -> None:
        """Make a profile's rows say exactly `values` (after a merge the rows held are
        `into`'s, though its values may have changed without that being a change)."""
        held = self.values(profile_id, "users")
        for key, value in values.items():
            definition = self.catalog.get(key)
            audience = definition is not None and definition.source.kind == "audience"
            if not (value is True if audience else value is not None):
                self.conn.execute(VALUE_DELETE, ("users", key, profile_id))
            elif held.get(key, _MISSING) != value:
                self.conn.execute(
                    VALUE_UPSERT, ("users", key, profile_id, _json(value).decode(), now_ms)
                )

    def _delete_profile(self, profile_id: str) -> None:
        for sql in (
            "DELETE FROM engage_profiles WHERE profile_id = ?",
            "DELETE FROM engage_buckets WHERE profile_id = ?",
            "DELETE FROM engage_links WHERE profile_id = ?",
            "DELETE FROM engage_values WHERE collection = 'users' AND id = ?",
        ):
            self.conn.execute(sql, (profile_id,))


def _note(touched: Touched, message: dict[str, Any], state: ProfileState, ids: int) -> None:
    event, _ = event_of(message)
    if event is not None:
        touched.events.add(event)
    if message.get("type") == "identify" and message.get("traits"):
        touched.traits = True
    if sum(len(v) for v in state.identifiers.values()) != ids:
        touched.identifiers = True


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    if conn.in_transaction:  # part of a larger one (Tables.process): it commits
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _load_json(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)
