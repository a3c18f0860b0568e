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

A later consumer (Engage) reads `resolutions` and `merges` incrementally by `seq`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from cdpd.identity.graph import Graph, Profile, Resolution, Seen, Trait
from cdpd.model.timestamps import format_ms, parse_ms

SCHEMA_VERSION = 1
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
);
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
);
CREATE INDEX external_ids_profile ON external_ids (profile_id);
CREATE TABLE traits (
    profile_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT,
    source_id  TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (profile_id, name)
);
CREATE TABLE links (
    profile_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (profile_id, account_id)
);
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
CREATE INDEX resolutions_account ON resolutions (account_id, seq);
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
CREATE TABLE position (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);
INSERT INTO position (name, seq) VALUES ('outbox', 0);
"""

_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()


class SchemaMismatch(Exception):
    """The identity store was written by a different cdpd."""


@asynccontextmanager
async def connect(path: Path, *, readonly: bool = False) -> AsyncIterator[aiosqlite.Connection]:
    """Open (creating it the first time) the identity store."""
    if readonly:
        conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await _create(conn)
        yield conn
    finally:
        await conn.close()


async def _create(conn: aiosqlite.Connection) -> None:
    version = next(iter(await conn.execute_fetchall("PRAGMA user_version")))[0]
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise SchemaMismatch(f"identity store schema {version}; this cdpd knows {SCHEMA_VERSION}")
    await conn.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")


async def position(conn: aiosqlite.Connection) -> int:
    rows = await conn.execute_fetchall("SELECT seq FROM position WHERE name = 'outbox'")
    return int(next(iter(rows))[0])


# -- loading the graph -------------------------------------------------------------------------


async def load_graph(conn: aiosqlite.Connection) -> Graph:
    graph = Graph()
    for row in await conn.execute_fetchall(
        "SELECT profile_id, collection, canonical_id, created_at, created_seq, first_message_id,"
        " first_source_id, updated_at, last_message_id, last_source_id, merges FROM profiles"
    ):
        pid, collection, canonical, created, created_seq, first_id, first_source = row[:7]
        updated, last_id, last_source, merges = row[7:]
        graph.profiles[pid] = Profile(
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
    for (
        collection,
        kind,
        value,
        pid,
        created,
        seq,
        message_id,
        source,
    ) in await conn.execute_fetchall(
        "SELECT collection, type, value, profile_id, created_at, seq, message_id, source_id"
        " FROM external_ids"
    ):
        graph.profiles[pid].identifiers[(kind, value)] = Seen(
            parse_ms(created), seq, message_id, source
        )
        graph.owners[(collection, (kind, value))] = pid
    for pid, name, value, source, updated, seq in await conn.execute_fetchall(
        "SELECT profile_id, name, value, source_id, updated_at, seq FROM traits"
    ):
        parsed = None if value is None else _decode.decode(value)
        graph.profiles[pid].traits[name] = Trait(parsed, source, parse_ms(updated), seq)
    for pid, account in await conn.execute_fetchall("SELECT profile_id, account_id FROM links"):
        graph.profiles[pid].links.add(account)
        graph.profiles[account].links.add(pid)
    return graph


# -- persisting a batch ------------------------------------------------------------------------


async def save_batch(
    conn: aiosqlite.Connection, graph: Graph, resolutions: list[Resolution], to_seq: int
) -> None:
    """Write what `resolutions` (already applied to `graph`) changed, and move the position to
    `to_seq`, in one transaction. Merges are replayed in order; everything else is written
    from the graph's final state, so a batch costs a few statements whatever its size."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await _save(conn, graph, resolutions)
        await conn.execute("UPDATE position SET seq = ? WHERE name = 'outbox'", (to_seq,))
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


async def _save(conn: aiosqlite.Connection, graph: Graph, resolutions: list[Resolution]) -> None:
    created, touched, retraited, attached, linked = [], set(), set(), [], set()
    merges = []
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
    await conn.executemany(
        "INSERT INTO profiles (profile_id, collection, canonical_id, created_at, created_seq,"
        " first_message_id, first_source_id, updated_at, last_message_id, last_source_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                pid,
                c,
                pid,
                format_ms(r.at_ms),
                r.seq,
                r.message_id,
                r.source,
                format_ms(r.at_ms),
                r.message_id,
                r.source,
            )
            for r, pid, c in created
        ],
    )
    for r, collection, merged, into in merges:
        await _save_merge(conn, r, collection, merged, into)
    await _save_identifiers(conn, graph, attached)
    await _save_profiles(conn, graph, touched)
    await _save_traits(conn, graph, retraited)
    await conn.executemany(
        "INSERT INTO links (profile_id, account_id, seq) VALUES (?, ?, ?)"
        " ON CONFLICT (profile_id, account_id) DO UPDATE SET seq = min(seq, excluded.seq)",
        sorted((graph.canonical(u), graph.canonical(a), seq) for u, a, seq in linked),
    )
    await conn.executemany(
        "INSERT OR REPLACE INTO resolutions (seq, message_id, source_id, type, received_at,"
        " profile_id, account_id, created, demoted, blocked) VALUES (?,?,?,?,?,?,?,?,?,?)",
        [_resolution_row(r) for r in resolutions],
    )


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


async def _save_merge(
    conn: aiosqlite.Connection, r: Resolution, collection: str, merged: str, into: str
) -> None:
    await conn.execute(
        "UPDATE external_ids SET profile_id = ? WHERE profile_id = ?", (into, merged)
    )
    await conn.execute(
        "UPDATE profiles SET canonical_id = ? WHERE canonical_id = ?", (into, merged)
    )
    await conn.execute("DELETE FROM traits WHERE profile_id = ?", (merged,))
    column, other = ("profile_id", "account_id")
    if collection == "accounts":
        column, other = other, column
    # A link keeps the seq of the first message that linked the two, whichever side it was on.
    await conn.execute(
        f"INSERT INTO links ({column}, {other}, seq) SELECT ?, {other}, seq FROM links"  # noqa: S608
        f" WHERE {column} = ? ORDER BY seq"
        " ON CONFLICT (profile_id, account_id) DO UPDATE SET seq = min(seq, excluded.seq)",
        (into, merged),
    )
    await conn.execute(f"DELETE FROM links WHERE {column} = ?", (merged,))  # noqa: S608
    await conn.execute(
        "INSERT INTO merges (seq, message_id, source_id, collection, profile_id,"
        " into_profile_id, merged_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (r.seq, r.message_id, r.source, collection, merged, into, format_ms(r.at_ms)),
    )


async def _save_identifiers(
    conn: aiosqlite.Connection, graph: Graph, attached: Iterable[tuple[str, tuple[str, str]]]
) -> None:
    rows = []
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
    await conn.executemany(
        "INSERT OR REPLACE INTO external_ids (collection, type, value, profile_id, created_at,"
        " seq, message_id, source_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


async def _save_profiles(conn: aiosqlite.Connection, graph: Graph, touched: set[str]) -> None:
    rows = []
    for pid in touched:
        p = graph.profiles.get(pid)
        if p is not None:
            rows.append((format_ms(p.updated_ms), p.last_message_id, p.last_source, p.merges, pid))
    await conn.executemany(
        "UPDATE profiles SET updated_at = ?, last_message_id = ?, last_source_id = ?, merges = ?"
        " WHERE profile_id = ?",
        rows,
    )


async def _save_traits(conn: aiosqlite.Connection, graph: Graph, pids: set[str]) -> None:
    rows = []
    for pid in pids:
        profile = graph.profiles.get(pid)
        if profile is None or profile.merged_into is not None:
            continue
        for name, t in profile.traits.items():
            value = None if t.value is None else _json.encode(t.value).decode()
            rows.append((pid, name, value, t.source, format_ms(t.updated_ms), t.seq))
    await conn.executemany(
        "INSERT OR REPLACE INTO traits (profile_id, name, value, source_id, updated_at, seq)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


# -- removing ----------------------------------------------------------------------------------


async def delete_profiles(conn: aiosqlite.Connection, pids: list[str]) -> None:
    """Delete every trace of the given profiles (their resolutions and merges included), in
    one transaction."""
    params = [(pid,) for pid in pids]
    await conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in (
            "DELETE FROM profiles WHERE profile_id = ?",
            "DELETE FROM external_ids WHERE profile_id = ?",
            "DELETE FROM traits WHERE profile_id = ?",
            "DELETE FROM links WHERE profile_id = ? ",
            "DELETE FROM links WHERE account_id = ?",
            "UPDATE resolutions SET profile_id = NULL WHERE profile_id = ?",
            "UPDATE resolutions SET account_id = NULL WHERE account_id = ?",
            "DELETE FROM merges WHERE profile_id = ?",
            "DELETE FROM merges WHERE into_profile_id = ?",
        ):
            await conn.executemany(sql, params)
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


async def delete_identifier(
    conn: aiosqlite.Connection, collection: str, identifier: tuple[str, str]
) -> None:
    await conn.execute(
        "DELETE FROM external_ids WHERE collection = ? AND type = ? AND value = ?",
        (collection, *identifier),
    )
