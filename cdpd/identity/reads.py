"""Reading profiles from the identity store (the Profile API's and the CLI's queries).

Every query reads committed state through a read-only connection; the outbox is attached to
it (as `outbox`) for the events history, whose payloads stay in the outbox.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

_decode = msgspec.json.Decoder()


class TraitRow(msgspec.Struct, frozen=True):
    name: str
    value: Any
    source_id: str
    updated_at: str


class ExternalIdRow(msgspec.Struct, frozen=True):
    collection: str
    type: str
    id: str
    source_id: str
    created_at: str
    first_message_id: str
    seq: int


class ProfileRow(msgspec.Struct, frozen=True):
    profile_id: str
    collection: str
    canonical_id: str
    created_at: str
    first_message_id: str
    first_source_id: str
    updated_at: str
    last_message_id: str
    last_source_id: str
    merges: int


class EventRow(msgspec.Struct, frozen=True):
    seq: int
    profile_id: str
    received_at: str
    source_id: str
    payload: str


class MergeRow(msgspec.Struct, frozen=True):
    seq: int
    message_id: str
    source_id: str
    profile_id: str
    into_profile_id: str
    merged_at: str


async def attach_outbox(conn: aiosqlite.Connection, outbox: Path) -> None:
    await conn.execute("ATTACH DATABASE ? AS outbox", (f"file:{outbox}?mode=ro",))


async def find(conn: aiosqlite.Connection, collection: str, kind: str, value: str) -> str | None:
    """The canonical profile holding an identifier."""
    rows = list(
        await conn.execute_fetchall(
            "SELECT p.canonical_id FROM external_ids e JOIN profiles p USING (profile_id)"
            " WHERE e.collection = ? AND e.type = ? AND e.value = ?",
            (collection, kind, value),
        )
    )
    return str(rows[0][0]) if rows else None


async def profile(conn: aiosqlite.Connection, pid: str) -> ProfileRow | None:
    rows = list(
        await conn.execute_fetchall(
            "SELECT profile_id, collection, canonical_id, created_at, first_message_id,"
            " first_source_id, updated_at, last_message_id, last_source_id, merges"
            " FROM profiles WHERE profile_id = ?",
            (pid,),
        )
    )
    return ProfileRow(*rows[0]) if rows else None


async def traits(
    conn: aiosqlite.Connection, pid: str, *, after: str = "", names: list[str] | None = None
) -> list[TraitRow]:
    """The profile's traits by name (removed ones left out), from after the name `after`."""
    sql = (
        "SELECT name, value, source_id, updated_at FROM traits"
        " WHERE profile_id = ? AND value IS NOT NULL AND name > ?"
    )
    params: list[Any] = [pid, after]
    if names is not None:
        sql += f" AND name IN ({', '.join('?' * len(names))})"
        params += names
    rows = await conn.execute_fetchall(sql + " ORDER BY name", params)
    return [TraitRow(name, _decode.decode(value), source, at) for name, value, source, at in rows]


async def external_ids(
    conn: aiosqlite.Connection, pid: str, *, types: list[str] | None = None
) -> list[ExternalIdRow]:
    """The profile's identifiers, newest first."""
    sql = (
        "SELECT collection, type, value, source_id, created_at, message_id, seq"
        " FROM external_ids WHERE profile_id = ?"
    )
    params: list[Any] = [pid]
    if types is not None:
        sql += f" AND type IN ({', '.join('?' * len(types))})"
        params += types
    rows = await conn.execute_fetchall(sql + " ORDER BY seq DESC, type, value", params)
    return [ExternalIdRow(*row) for row in rows]


async def events(
    conn: aiosqlite.Connection,
    pid: str,
    *,
    start: str,
    end: str,
    before_seq: int | None,
    after_seq: int | None,
    descending: bool,
    include: list[str] | None,
    exclude: list[str] | None,
    limit: int,
) -> list[EventRow]:
    """Messages resolved to the profile (or to any profile merged into it), with payloads."""
    column = "account_id" if pid.startswith("acc_") else "profile_id"
    sql = (
        f"SELECT r.seq, r.{column}, r.received_at, m.source, m.payload FROM resolutions r"  # noqa: S608
        " JOIN outbox.messages m ON m.seq = r.seq"
        f" WHERE r.{column} IN (SELECT profile_id FROM profiles WHERE canonical_id = ?)"
        " AND r.received_at >= ? AND r.received_at < ?"
    )
    params: list[Any] = [pid, start, end]
    if before_seq is not None:
        sql += " AND r.seq < ?"
        params.append(before_seq)
    if after_seq is not None:
        sql += " AND r.seq > ?"
        params.append(after_seq)
    if include is not None:
        sql += f" AND m.event IN ({', '.join('?' * len(include))})"
        params += include
    if exclude is not None:
        sql += f" AND (m.event IS NULL OR m.event NOT IN ({', '.join('?' * len(exclude))}))"
        params += exclude
    sql += f" ORDER BY r.seq {'DESC' if descending else 'ASC'} LIMIT ?"
    rows = await conn.execute_fetchall(sql, [*params, limit])
    return [EventRow(*row) for row in rows]


async def linked(conn: aiosqlite.Connection, pid: str) -> list[str]:
    """The profiles of the other collection linked to `pid`."""
    if pid.startswith("acc_"):
        sql = "SELECT profile_id FROM links WHERE account_id = ? ORDER BY seq, profile_id"
    else:
        sql = "SELECT account_id FROM links WHERE profile_id = ? ORDER BY seq, account_id"
    return [str(row[0]) for row in await conn.execute_fetchall(sql, (pid,))]


async def merges(conn: aiosqlite.Connection, pid: str) -> list[MergeRow]:
    """Every merge that went into `pid` (directly or through a profile merged into it)."""
    rows = await conn.execute_fetchall(
        "SELECT seq, message_id, source_id, profile_id, into_profile_id, merged_at FROM merges"
        " WHERE into_profile_id IN (SELECT profile_id FROM profiles WHERE canonical_id = ?)"
        " ORDER BY seq, id",
        (pid,),
    )
    return [MergeRow(*row) for row in rows]


class Resolved(msgspec.Struct, frozen=True):
    """A message resolved to a profile, with what was demoted or blocked on the way."""

    seq: int
    message_id: str
    source_id: str
    type: str
    received_at: str
    created: bool
    demoted: list[dict[str, str]] | None
    blocked: list[dict[str, str]] | None


async def resolved(conn: aiosqlite.Connection, pid: str, *, limit: int) -> list[Resolved]:
    """The profile's most recent resolutions, newest first."""
    column = "account_id" if pid.startswith("acc_") else "profile_id"
    rows = await conn.execute_fetchall(
        "SELECT seq, message_id, source_id, type, received_at, created, demoted, blocked"  # noqa: S608
        f" FROM resolutions WHERE {column} IN"
        " (SELECT profile_id FROM profiles WHERE canonical_id = ?) ORDER BY seq DESC LIMIT ?",
        (pid, limit),
    )
    return [
        Resolved(
            seq,
            message_id,
            source,
            kind,
            at,
            bool(created),
            None if demoted is None else _decode.decode(demoted),
            None if blocked is None else _decode.decode(blocked),
        )
        for seq, message_id, source, kind, at, created, demoted, blocked in rows
    ]


async def demotions(conn: aiosqlite.Connection, pid: str) -> list[Resolved]:
    """The profile's messages that had identifiers demoted, oldest first."""
    rows = await conn.execute_fetchall(
        "SELECT seq, message_id, source_id, type, received_at, created, demoted, blocked"
        " FROM resolutions WHERE profile_id IN"
        " (SELECT profile_id FROM profiles WHERE canonical_id = ?) AND demoted IS NOT NULL"
        " ORDER BY seq",
        (pid,),
    )
    return [
        Resolved(
            s, m, src, k, at, bool(c), _decode.decode(d), None if b is None else _decode.decode(b)
        )
        for s, m, src, k, at, c, d, b in rows
    ]


async def payload(conn: aiosqlite.Connection, seq: int) -> str | None:
    """A message's payload, if the outbox still holds it."""
    rows = list(
        await conn.execute_fetchall("SELECT payload FROM outbox.messages WHERE seq = ?", (seq,))
    )
    return str(rows[0][0]) if rows else None


async def replayable(
    conn: aiosqlite.Connection, pids: list[str]
) -> tuple[list[tuple[Any, ...]], int]:
    """The outbox rows of every message resolved to `pids`, in order, and how many messages
    were resolved to them (more than the rows: the outbox no longer holds some)."""
    marks = ", ".join("?" * len(pids))
    rows = await conn.execute_fetchall(
        "SELECT m.seq, m.message_id, m.source, m.type, m.event, m.user_id, m.anonymous_id,"  # noqa: S608
        f" m.received_at, m.payload FROM resolutions r JOIN outbox.messages m ON m.seq = r.seq"
        f" WHERE r.profile_id IN ({marks}) ORDER BY r.seq",
        pids,
    )
    counted = await conn.execute_fetchall(
        f"SELECT count(*) FROM resolutions WHERE profile_id IN ({marks})",  # noqa: S608
        pids,
    )
    return [tuple(row) for row in rows], int(next(iter(counted))[0])


# -- the record later stages follow (Engage) ----------------------------------------------------


class ResolutionRecord(msgspec.Struct, frozen=True):
    """One message as resolution left it: the profiles at the time and where they live now."""

    seq: int
    message_id: str
    type: str
    profile_id: str | None
    canonical_id: str | None
    account_id: str | None


async def resolved_through(conn: aiosqlite.Connection) -> int:
    """Every message up to this seq has its resolution (and merges) in the store."""
    rows = await conn.execute_fetchall("SELECT seq FROM position WHERE name = 'outbox'")
    return int(next(iter(rows))[0])


async def resolutions_after(
    conn: aiosqlite.Connection, after_seq: int, limit: int
) -> list[ResolutionRecord]:
    """The next `limit` resolutions past `after_seq`, in order (a follower's incremental read)."""
    rows = await conn.execute_fetchall(
        "SELECT r.seq, r.message_id, r.type, r.profile_id, p.canonical_id, r.account_id"
        " FROM resolutions r LEFT JOIN profiles p ON p.profile_id = r.profile_id"
        " WHERE r.seq > ? ORDER BY r.seq LIMIT ?",
        (after_seq, limit),
    )
    return [ResolutionRecord(*row) for row in rows]


async def merges_after(conn: aiosqlite.Connection, after_seq: int) -> list[MergeRow]:
    """Merges triggered by messages past `after_seq`, in order."""
    rows = await conn.execute_fetchall(
        "SELECT seq, message_id, source_id, profile_id, into_profile_id, merged_at FROM merges"
        " WHERE seq > ? ORDER BY seq, id",
        (after_seq,),
    )
    return [MergeRow(*row) for row in rows]


class ResolvedMessage(msgspec.Struct, frozen=True):
    """A resolution with the message itself (from the outbox): what Engage applies."""

    seq: int
    source: str
    canonical_id: str | None
    payload: str | None  # None once the outbox no longer holds the message


async def messages_after(
    conn: aiosqlite.Connection, after_seq: int, limit: int
) -> list[ResolvedMessage]:
    """`resolutions_after` with each message's source and payload (the outbox is attached)."""
    rows = await conn.execute_fetchall(
        "SELECT r.seq, coalesce(m.source, ''), p.canonical_id, m.payload FROM resolutions r"
        " LEFT JOIN profiles p ON p.profile_id = r.profile_id"
        " LEFT JOIN outbox.messages m ON m.seq = r.seq"
        " WHERE r.seq > ? ORDER BY r.seq LIMIT ?",
        (after_seq, limit),
    )
    return [ResolvedMessage(*row) for row in rows]


class ForgottenRow(msgspec.Struct, frozen=True):
    id: int
    at_seq: int
    profile_id: str


async def forgotten_after(conn: aiosqlite.Connection, after_id: int) -> list[ForgottenRow]:
    """Profiles deleted after record `after_id`, in order (`at_seq`: the outbox position then)."""
    rows = await conn.execute_fetchall(
        "SELECT id, at_seq, profile_id FROM forgotten WHERE id > ? ORDER BY id", (after_id,)
    )
    return [ForgottenRow(*row) for row in rows]
