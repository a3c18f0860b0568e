"""Where each definition stands with each destination it is sent to (`engage_syncs`), and what
is due next: the first sync of a definition to a destination sends every current member and
value, page by page (accounts, for an account audience, each with its users); later syncs
send the changes recorded after the position reached. A resync forgets the position, so the
next sync is a first sync again. Synchronous, like tables.py, and run on the store's thread.

    engage_syncs  key, destination, seq (changes up to here are sent or covered),
                  first_sync_after (the last id a first sync has sent; NULL once done),
                  synced_at_ms
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from cdpd.engage.catalog import Change, Kind
from cdpd.engage.tables import Collection, decode_head

SCHEMA = """
CREATE TABLE engage_syncs (
    key              TEXT NOT NULL,
    destination      TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    first_sync_after TEXT,
    synced_at_ms     INTEGER,
    PRIMARY KEY (key, destination)
) WITHOUT ROWID;
"""


class Outgoing(msgspec.Struct, frozen=True):
    """One change to send to one destination, with who the profile is."""

    change_id: str  # names the change in message ids: a seq, or first-<seq>-<profile>
    profile_id: str
    change: Change
    identifiers: dict[str, list[str]]
    # An account's change (profile_id is then the group id): its users, as (profile id,
    # identifiers), at the time of sending.
    members: tuple[tuple[str, dict[str, list[str]]], ...] = ()


class Due(msgspec.Struct, frozen=True):
    items: list[Outgoing]
    # What to record once the items are handed on: (seq, first_sync_after).
    position: tuple[int, str | None]
    first_sync: bool


def due(
    conn: sqlite3.Connection,
    key: str,
    kind: Kind,
    destination: str,
    limit: int,
    collection: Collection = "users",
) -> Due:
    row = conn.execute(
        "SELECT seq, first_sync_after FROM engage_syncs WHERE key = ? AND destination = ?",
        (key, destination),
    ).fetchone()
    if row is None:
        (start,) = conn.execute("SELECT coalesce(max(seq), 0) FROM engage_changes").fetchone()
        return _first_page(conn, key, kind, start, "", limit, collection)
    seq, after = row
    if after is not None:
        return _first_page(conn, key, kind, seq, after, limit, collection)
    rows = conn.execute(
        "SELECT c.seq, c.id, c.change, c.value, c.previous, p.state FROM engage_changes c "
        "LEFT JOIN engage_profiles p ON p.profile_id = c.id "
        "WHERE c.key = ? AND c.seq > ? AND (c.collection = ? OR c.change = 'joined') "
        "ORDER BY c.seq LIMIT ?",
        (key, seq, collection, limit),
    ).fetchall()
    items = [
        Outgoing(
            change_id=str(change_seq),
            profile_id=profile_id,
            change=Change(key, kind, change, _json(value), _json(previous)),
            identifiers=_identifiers(state),
            members=(
                _members(conn, profile_id, key, change_seq)
                if _is_account(collection, change)
                else ()
            ),
        )
        for change_seq, profile_id, change, value, previous, state in rows
    ]
    last = rows[-1][0] if rows else seq
    return Due(items=items, position=(last, None), first_sync=False)


def _first_page(
    conn: sqlite3.Connection,
    key: str,
    kind: Kind,
    start: int,
    after: str,
    limit: int,
    collection: Collection,
) -> Due:
    rows = conn.execute(
        "SELECT v.id, v.value, p.state FROM engage_values v "
        "LEFT JOIN engage_profiles p ON p.profile_id = v.id "
        "WHERE v.collection = ? AND v.key = ? AND v.id > ? ORDER BY v.id LIMIT ?",
        (collection, key, after, limit),
    ).fetchall()
    items = []
    for profile_id, value, state in rows:
        decoded = _json(value)
        change = (
            Change(key, kind, "entered", True, False)
            if kind == "audience"
            else Change(key, kind, "computed", decoded, None)
        )
        members = _members(conn, profile_id, key, start) if collection == "accounts" else ()
        items.append(
            Outgoing(
                f"first-{start}-{profile_id}", profile_id, change, _identifiers(state), members
            )
        )
    done = len(rows) < limit
    return Due(items=items, position=(start, None if done else rows[-1][0]), first_sync=True)


def mark(
    conn: sqlite3.Connection,
    key: str,
    destination: str,
    position: tuple[int, str | None],
    now_ms: int,
) -> None:
    conn.execute(
        "INSERT INTO engage_syncs (key, destination, seq, first_sync_after, synced_at_ms) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key, destination) DO UPDATE SET seq = excluded.seq, "
        "first_sync_after = excluded.first_sync_after, synced_at_ms = excluded.synced_at_ms",
        (key, destination, position[0], position[1], now_ms),
    )


def forget(conn: sqlite3.Connection, key: str, destination: str) -> bool:
    """`cdpd audiences resync`: the next sync is a first sync. False when never synced."""
    cursor = conn.execute(
        "DELETE FROM engage_syncs WHERE key = ? AND destination = ?", (key, destination)
    )
    return cursor.rowcount > 0


def _is_account(collection: Collection, change: str) -> bool:
    """A change of the account itself, sent to it and its users (a `joined` change is one
    user's)."""
    return collection == "accounts" and change != "joined"


def _members(
    conn: sqlite3.Connection, group_id: str, key: str, seq: int
) -> tuple[tuple[str, dict[str, list[str]]], ...]:
    """The users linked to an account, each with its identifiers, but those that joined it
    after change `seq`: their own `joined` change sends them the membership, once."""
    rows = conn.execute(
        "SELECT l.profile_id, p.state FROM engage_links l "
        "LEFT JOIN engage_profiles p ON p.profile_id = l.profile_id "
        "WHERE l.group_id = ? AND l.profile_id NOT IN (SELECT id FROM engage_changes "
        "WHERE key = ? AND seq > ? AND change = 'joined') ORDER BY l.profile_id",
        (group_id, key, seq),
    ).fetchall()
    return tuple((profile_id, _identifiers(state)) for profile_id, state in rows)


def _identifiers(state: bytes | None) -> dict[str, list[str]]:
    return {} if state is None else decode_head(state).identifiers


def _json(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)
