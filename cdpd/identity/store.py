"""The identity store: its own SQLite file and its own writer, so resolution never queues
behind ingest's commits.

Tables (documented in README.md, read them with the sqlite3 shell):

- `profiles`: every profile, with `canonical_id` pointing at the profile it now lives in
  (itself until merged) and Segment's metadata (first/last message and source).
- `external_ids`: which profile owns each identifier (`collection`, `type`, `value`).
- `traits`: the latest value of each trait per canonical profile, JSON text, NULL once removed.
- `links`: user profiles and the account profiles they belong to.
- `resolutions`: the ordered record of what resolution produced, one row per outbox message:
  `seq` -> the canonical profile (and account) at the time, with what was demoted or blocked.
- `merges`: every merge, with the message that triggered it.
- `position`: how far resolution has read the outbox (moved in the same transaction as the
  rows above).
- `forgotten`: every profile deleted (a deletion regulation), in order, with the outbox
  position it happened at, so followers forget it too.
- `removals`, and `change_seq` on `profiles`, `external_ids`, `traits` and `merges`: the change
  numbers Profiles Sync follows (see `cdpd.identity.changes`).

A later consumer (Engage) reads `resolutions`, `merges` and `forgotten` incrementally.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from cdpd.identity import changes
from cdpd.identity.graph import Graph, Profile, Resolution, Seen, Trait
from cdpd.model.pragmas import SECURE_DELETE
from cdpd.model.timestamps import format_ms, parse_ms
from cdpd.model.timestamps import now_ms as _now_ms

SCHEMA_VERSION = changes.VERSION
CACHE_KIB = 64 * 1024
CHECKPOINT_PAGES = 10_000
SCHEMA = """
CREATE TABLE profiles (
    profile_id       TEXT PRIMARY KEY,
    collection       TEXT NOT NULL,
    canonical_id     TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    created_seq      INTEGER NOT NULL,
    first_message_id TEXT NOT NULL,
    first_source_id  TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    last_message_id  TEXT NOT NULL,
    last_source_id   TEXT NOT NULL,
    merges           INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX profiles_canonical ON profiles (canonical_id);
CREATE TABLE external_ids (
    collection  TEXT NOT NULL,
    type        TEXT NOT NULL,
    value       TEXT NOT NULL,
    profile_id  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    source_id   TEXT NOT NULL,
    PRIMARY KEY (collection, type, value)
) WITHOUT ROWID;
CREATE INDEX external_ids_profile ON external_ids (profile_id);
CREATE TABLE traits (
    profile_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT,
    source_id  TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (profile_id, name)
) WITHOUT ROWID;
CREATE TABLE links (
    profile_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (profile_id, account_id)
) WITHOUT ROWID;
CREATE INDEX links_account ON links (account_id);
CREATE TABLE resolutions (
    seq         INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL,
    source_id   TEXT NOT NULL,
    type        TEXT NOT NULL,
    received_at TEXT NOT NULL,
    profile_id  TEXT,
    account_id  TEXT,
    created     INTEGER NOT NULL DEFAULT 0,
    demoted     TEXT,
    blocked     TEXT
);
CREATE INDEX resolutions_profile ON resolutions (profile_id, seq);
CREATE INDEX resolutions_account ON resolutions (account_id, seq) WHERE account_id IS NOT NULL;
CREATE TABLE merges (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    seq             INTEGER NOT NULL,
    message_id      TEXT NOT NULL,
    source_id       TEXT NOT NULL,
    collection      TEXT NOT NULL,
    profile_id      TEXT NOT NULL,
    into_profile_id TEXT NOT NULL,
    merged_at       TEXT NOT NULL
);
CREATE INDEX merges_into ON merges (into_profile_id);
CREATE INDEX merges_seq ON merges (seq);
CREATE TABLE separations (
    collection TEXT NOT NULL,
    type       TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (collection, type, value)
) WITHOUT ROWID;
CREATE TABLE position (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);
INSERT INTO position (name, seq) VALUES ('outbox', 0);
"""

# Version 2: the record of forgotten profiles (Engage follows it).
FORGOTTEN = """
CREATE TABLE forgotten (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at_seq       INTEGER NOT NULL,
    profile_id   TEXT NOT NULL,
    forgotten_at TEXT NOT NULL
);
"""

_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()


class SchemaMismatch(Exception):
    """The identity store was written by a different cdpd."""


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """Open (creating it the first time) the identity store for writing. Its calls are
    blocking: the stage runs them on its own writer thread, a whole batch per hop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(SECURE_DELETE)
        # Batches touch pages all over the indexes: a larger cache, and checkpoints every
        # ~40 MB of WAL rather than every 4 MB, keep a commit from rereading and fsyncing them.
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
        _create(conn)
        yield conn
    finally:
        conn.close()


@asynccontextmanager
async def connect_reader(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """A read-only connection (its own thread) for the Profile API and the CLI."""
    conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        yield conn
    finally:
        await conn.close()


def _create(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in range(SCHEMA_VERSION + 1):
        raise SchemaMismatch(f"identity store schema {version}; this cdpd knows {SCHEMA_VERSION}")
    if version == 0:  # a new store is made as version 2, then migrated like an old one
        conn.executescript(f"BEGIN; {SCHEMA} {FORGOTTEN} PRAGMA user_version = 2; COMMIT;")
    if version == 1:
        _add_forgotten(conn)
    if version < 3:
        changes.add_change_numbers(conn)


def _add_forgotten(conn: sqlite3.Connection) -> None:
    """Migration 1 -> 2: the `forgotten` record."""
    conn.executescript(f"BEGIN; {FORGOTTEN} PRAGMA user_version = 2; COMMIT;")


def position(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT seq FROM position WHERE name = 'outbox'").fetchone()[0])


def set_position(conn: sqlite3.Connection, name: str, seq: int) -> None:
    """A position kept beside the profiles (of a log other than the outbox); no profile
    changes, so it takes no change number (one statement: autocommitted)."""
    conn.execute("INSERT OR REPLACE INTO position (name, seq) VALUES (?, ?)", (name, seq))


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(changes.NEXT_CHANGE)  # what this transaction writes carries the number
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- loading the graph -------------------------------------------------------------------------


def load_graph(conn: sqlite3.Connection) -> Graph:
    graph = Graph()
    for row in conn.execute(
        "SELECT profile_id, collection, canonical_id, created_at, created_seq, first_message_id,"
        " first_source_id, updated_at, last_message_id, last_source_id, merges FROM profiles"
    ):
        pid, collection, canonical, created, created_seq, first_id, first_source = row[:7]
        updated, last_id, last_source, merges = row[7:]
        graph.add(
            Profile(
                id=pid,
                collection=collection,
                created_ms=parse_ms(created),
                created_seq=created_seq,
                first_message_id=first_id,
                first_source=first_source,
                updated_ms=parse_ms(updated),
                last_message_id=last_id,
                last_source=last_source,
                merges=merges,
                merged_into=None if canonical == pid else canonical,
            )
        )
    for (
        collection,
        kind,
        value,
        pid,
        created,
        seq,
        message_id,
        source,
    ) in conn.execute(
        "SELECT collection, type, value, profile_id, created_at, seq, message_id, source_id"
        " FROM external_ids"
    ):
        graph.profiles[pid].identifiers[(kind, value)] = Seen(
            parse_ms(created), seq, message_id, source
        )
        graph.owners[(collection, (kind, value))] = pid
    for pid, name, value, source, updated, seq in conn.execute(
        "SELECT profile_id, name, value, source_id, updated_at, seq FROM traits"
    ):
        parsed = None if value is None else _decode.decode(value)
        graph.profiles[pid].traits[name] = Trait(parsed, source, parse_ms(updated), seq)
    for collection, kind, value in conn.execute("SELECT collection, type, value FROM separations"):
        graph.separated.add((collection, (kind, value)))
    for pid, account in conn.execute("SELECT profile_id, account_id FROM links"):
        graph.profiles[pid].links.add(account)
        graph.profiles[account].links.add(pid)
    return graph


# -- persisting a batch ------------------------------------------------------------------------


class Batch(msgspec.Struct, frozen=True):
    """The statements that persist one batch, in order, with their rows: planned from the graph
    on the event loop, written on the writer thread while the next batch is resolved."""

    statements: list[tuple[str, list[tuple[Any, ...]]]]
    to_seq: int


def save_batch(
    conn: sqlite3.Connection, graph: Graph, resolutions: list[Resolution], to_seq: int
) -> None:
    write(conn, plan(graph, resolutions, to_seq))


def write(conn: sqlite3.Connection, batch: Batch) -> None:
    """Run a planned batch and move the position to its end, in one transaction."""
    with _transaction(conn):
        for sql, rows in batch.statements:
            if rows:
                conn.executemany(sql, rows)
        conn.execute("UPDATE position SET seq = ? WHERE name = 'outbox'", (batch.to_seq,))


def plan(graph: Graph, resolutions: list[Resolution], to_seq: int) -> Batch:
    """What `resolutions` (already applied to `graph`) changed, as statements. Merges are
    replayed in order; everything else is written from the graph's final state, so a batch
    costs a few statements whatever its size."""
    created, touched, retraited, attached, linked = [], set(), set(), [], set()
    merges: list[tuple[Resolution, str, str, str]] = []
    for r in resolutions:
        for outcome in (r.user, r.account):
            if outcome is None:
                continue
            touched.add(outcome.profile_id)
            if outcome.created:
                created.append((r, outcome.profile_id, outcome.collection))
            if outcome.traits or outcome.merged:
                retraited.add(outcome.profile_id)
            attached += [(outcome.collection, ident) for ident in outcome.attached]
            merges += [(r, outcome.collection, m, outcome.profile_id) for m in outcome.merged]
        if r.user is not None and r.account is not None:
            linked.add((r.user.profile_id, r.account.profile_id, r.seq))
    statements: list[tuple[str, list[tuple[Any, ...]]]] = [
        (
            "INSERT INTO profiles (profile_id, collection, canonical_id, created_at, created_seq,"
            " first_message_id, first_source_id, updated_at, last_message_id, last_source_id,"
            " change_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT seq FROM position WHERE name = 'changes')"
            ")",
            [
                (pid, c, pid, at, r.seq, r.message_id, r.source, at, r.message_id, r.source)
                for r, pid, c in created
                for at in [format_ms(r.at_ms)]
            ],
        ),
        *_merge_statements(merges),
        _identifier_rows(graph, attached),
        _profile_rows(graph, touched),
        _trait_rows(graph, retraited),
        (
            "INSERT INTO links (profile_id, account_id, seq) VALUES (?, ?, ?)"
            " ON CONFLICT (profile_id, account_id) DO UPDATE SET seq = min(seq, excluded.seq)",
            sorted((graph.canonical(u), graph.canonical(a), seq) for u, a, seq in linked),
        ),
        (
            "INSERT OR REPLACE INTO resolutions (seq, message_id, source_id, type, received_at,"
            " profile_id, account_id, created, demoted, blocked) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [_resolution_row(r) for r in resolutions],
        ),
    ]
    return Batch(statements, to_seq)


def _resolution_row(r: Resolution) -> tuple[Any, ...]:
    demoted = [
        {"collection": o.collection, "type": t, "id": v}
        for o in (r.user, r.account)
        if o is not None
        for t, v in o.demoted
    ]
    blocked = [{"collection": c, "type": t, "id": v} for c, (t, v) in r.blocked]
    return (
        r.seq,
        r.message_id,
        r.source,
        r.type,
        format_ms(r.at_ms),
        r.user.profile_id if r.user else None,
        r.account.profile_id if r.account else None,
        int(any(o is not None and o.created for o in (r.user, r.account))),
        _json.encode(demoted).decode() if demoted else None,
        _json.encode(blocked).decode() if blocked else None,
    )


_LINKS_TO = {
    # A link keeps the seq of the first message that linked the two, whichever side it was on.
    column: (
        f"INSERT INTO links ({column}, {other}, seq) SELECT ?, {other}, seq FROM links"  # noqa: S608
        f" WHERE {column} = ? ORDER BY seq"
        " ON CONFLICT (profile_id, account_id) DO UPDATE SET seq = min(seq, excluded.seq)",
        f"DELETE FROM links WHERE {column} = ?",  # noqa: S608
    )
    for column, other in (("profile_id", "account_id"), ("account_id", "profile_id"))
}


Statement = tuple[str, list[tuple[Any, ...]]]


def _merge_statements(merges: list[tuple[Resolution, str, str, str]]) -> list[Statement]:
    """Each statement runs once per merge, in merge order. Each reads only its own table, so
    running every merge through one statement before the next is the same as merging one at a
    time."""
    if not merges:
        return []
    pairs: list[tuple[Any, ...]] = [(into, merged) for _, _, merged, into in merges]
    statements: list[Statement] = [
        (
            "UPDATE external_ids SET profile_id = ?, change_seq = "
            "(SELECT seq FROM position WHERE name = 'changes')"
            " WHERE profile_id = ?",
            pairs,
        ),
        (
            "UPDATE profiles SET canonical_id = ?, change_seq = "
            "(SELECT seq FROM position WHERE name = 'changes')"
            " WHERE canonical_id = ?",
            pairs,
        ),
        ("DELETE FROM traits WHERE profile_id = ?", [(m,) for _, m in pairs]),
        _removals([m for _, m in pairs]),
    ]
    for collection, column in (("users", "profile_id"), ("accounts", "account_id")):
        moved: list[tuple[Any, ...]] = [(into, m) for _, c, m, into in merges if c == collection]
        copy, delete = _LINKS_TO[column]
        statements += [(copy, moved), (delete, [(m,) for _, m in moved])]
    statements.append(
        (
            "INSERT INTO merges (seq, message_id, source_id, collection, profile_id,"
            " into_profile_id, merged_at, change_seq) VALUES (?, ?, ?, ?, ?, ?, ?, "
            "(SELECT seq FROM position WHERE name = 'changes')"
            ")",
            [
                (r.seq, r.message_id, r.source, collection, merged, into, format_ms(r.at_ms))
                for r, collection, merged, into in merges
            ],
        )
    )
    return statements


def _identifier_rows(graph: Graph, attached: Iterable[tuple[str, tuple[str, str]]]) -> Statement:
    rows: list[tuple[Any, ...]] = []
    for collection, ident in attached:
        owner = graph.owner(collection, ident)
        if owner is None:  # removed again within the batch
            continue
        seen = graph.profiles[owner].identifiers[ident]
        rows.append(
            (
                collection,
                *ident,
                owner,
                format_ms(seen.at_ms),
                seen.seq,
                seen.message_id,
                seen.source,
            )
        )
    return (
        "INSERT OR REPLACE INTO external_ids (collection, type, value, profile_id, created_at,"
        " seq, message_id, source_id, change_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
        "(SELECT seq FROM position WHERE name = 'changes')"
        ")",
        rows,
    )


def _profile_rows(graph: Graph, touched: set[str]) -> Statement:
    rows: list[tuple[Any, ...]] = []
    for pid in touched:
        p = graph.profiles.get(pid)
        if p is not None:
            rows.append((format_ms(p.updated_ms), p.last_message_id, p.last_source, p.merges, pid))
    return (
        "UPDATE profiles SET updated_at = ?, last_message_id = ?, last_source_id = ?, merges = ?"
        " WHERE profile_id = ?",
        rows,
    )


def _trait_rows(graph: Graph, pids: set[str]) -> Statement:
    rows: list[tuple[Any, ...]] = []
    for pid in pids:
        profile = graph.profiles.get(pid)
        if profile is None or profile.merged_into is not None:
            continue
        for name, t in profile.traits.items():
            value = None if t.value is None else _json.encode(t.value).decode()
            rows.append((pid, name, value, t.source, format_ms(t.updated_ms), t.seq))
    return (TRAIT_UPSERT, rows)


# A profile's traits are all written whenever one changes; only those that did change take
# the change number (and are written at all).
TRAIT_UPSERT = (
    "INSERT INTO traits (profile_id, name, value, source_id, updated_at, seq, change_seq)"
    " VALUES (?, ?, ?, ?, ?, ?, "
    "(SELECT seq FROM position WHERE name = 'changes')"
    ") ON CONFLICT (profile_id, name) DO UPDATE SET"
    " value = excluded.value, source_id = excluded.source_id, updated_at = excluded.updated_at,"
    " seq = excluded.seq, change_seq = excluded.change_seq"
    " WHERE (value, source_id, updated_at, seq)"
    " IS NOT (excluded.value, excluded.source_id, excluded.updated_at, excluded.seq)"
)


def _removals(pids: list[str]) -> Statement:
    """Profiles whose rows this change deletes or writes again (see `cdpd.identity.changes`)."""
    return (
        "INSERT INTO removals (profile_id, change_seq) VALUES (?, "
        "(SELECT seq FROM position WHERE name = 'changes')"
        ")"
        " ON CONFLICT (profile_id) DO UPDATE SET change_seq = excluded.change_seq",
        [(pid,) for pid in pids],
    )


# -- removing ----------------------------------------------------------------------------------


def delete_profiles(conn: sqlite3.Connection, pids: list[str], *, record: bool = False) -> int:
    """Delete every trace of the given profiles (their resolutions and merges included), in
    one transaction; returns the rows removed (or changed). With `record`, their ids go into
    `forgotten` for Engage to follow (it deletes its state of them too)."""
    params = [(pid,) for pid in pids]
    removed = 0
    with _transaction(conn):
        for sql in (
            "DELETE FROM separations WHERE (collection, type, value) IN"
            " (SELECT collection, type, value FROM external_ids WHERE profile_id = ?)",
            "DELETE FROM profiles WHERE profile_id = ?",
            "DELETE FROM external_ids WHERE profile_id = ?",
            "DELETE FROM traits WHERE profile_id = ?",
            "DELETE FROM links WHERE profile_id = ? ",
            "DELETE FROM links WHERE account_id = ?",
            "DELETE FROM resolutions WHERE profile_id = ?",
            "UPDATE resolutions SET account_id = NULL WHERE account_id = ?",
            "DELETE FROM merges WHERE into_profile_id = ?",
            "DELETE FROM removals WHERE profile_id = ?",
        ):
            removed += max(conn.executemany(sql, params).rowcount, 0)
        # No index on merges.profile_id: one scan for them all.
        removed += max(
            conn.execute(
                "DELETE FROM merges WHERE profile_id IN (SELECT value FROM json_each(?))",
                (_json.encode(pids).decode(),),
            ).rowcount,
            0,
        )
        conn.execute(changes.FORGOT)
        if not record:
            return removed
        conn.executemany(
            "INSERT INTO forgotten (at_seq, profile_id, forgotten_at)"
            " SELECT seq, ?, ? FROM position WHERE name = 'outbox'",
            [(pid, format_ms(_now_ms())) for pid in pids],
        )
    return removed


def unmerge_statements(
    gone: list[str], separated: tuple[str, tuple[str, str]], at: str
) -> list[Statement]:
    """Forget the profiles being rebuilt (their resolutions are written again by the replay)
    and record the identifier split off."""
    params: list[tuple[Any, ...]] = [(pid,) for pid in gone]
    collection, (kind, value) = separated
    return [
        ("DELETE FROM profiles WHERE profile_id = ?", params),
        ("DELETE FROM external_ids WHERE profile_id = ?", params),
        ("DELETE FROM traits WHERE profile_id = ?", params),
        ("DELETE FROM links WHERE profile_id = ?", params),
        ("DELETE FROM merges WHERE profile_id = ?", params),
        ("DELETE FROM merges WHERE into_profile_id = ?", params),
        _removals(gone),
        (
            "INSERT OR IGNORE INTO separations (collection, type, value, created_at)"
            " VALUES (?, ?, ?, ?)",
            [(collection, kind, value, at)],
        ),
    ]


def delete_identifier(
    conn: sqlite3.Connection, pid: str, collection: str, identifier: tuple[str, str]
) -> None:
    """Delete one identifier of canonical profile `pid`. The profile's other rows take the
    change number too, so that Profiles Sync can clear the profile and write it again."""
    with _transaction(conn):
        conn.execute(
            "DELETE FROM external_ids WHERE collection = ? AND type = ? AND value = ?",
            (collection, *identifier),
        )
        for table in ("profiles", "external_ids", "traits"):
            conn.execute(
                f"UPDATE {table} SET change_seq = "  # noqa: S608
                "(SELECT seq FROM position WHERE name = 'changes')"
                " WHERE profile_id = ?",
                (pid,),
            )
        sql, rows = _removals([pid])
        conn.executemany(sql, rows)
