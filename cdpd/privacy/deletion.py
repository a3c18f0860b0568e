"""Deleting users from cdpd's own stores: the outbox, the warehouses and the local files.

The outbox first. Rows are found on a read-only connection (a scan of `messages` must not hold
the writer) and deleted by key in one writer transaction: the user's messages (by the
`user_id` column), rejects and blocked messages (by the `userId` in their payload), the
violations of any of those messages, and their deliveries with their attempts. A suppressing
regulation first lets the writer commit everything queued before the suppression took effect
(an empty append is a fence: the writer commits in order), so nothing of the user can be
stored after the scan.

A warehouse is erased between two of this process's syncs, inside a load transaction (so a
sync in another process waits too): every table's rows whose `user_id` is one of the users,
`users` rows by `id`, and the discards of the rows deleted. A sync that starts afterwards reads
an outbox that no longer holds the user.

A file destination's current file and rotated files (gzipped or not) are rewritten without the
user's lines, each to a temporary file renamed over the old one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import msgspec

from cdpd.config import Config, Warehouse
from cdpd.destinations.file import File
from cdpd.destinations.filelog import LogFile
from cdpd.destinations.settings import FileDestination
from cdpd.model.timestamps import now_ms
from cdpd.outbox import schema
from cdpd.outbox.writer import OutboxUnavailable, OutboxWriter
from cdpd.privacy.matchers import mask
from cdpd.warehouse.naming import schema_name
from cdpd.warehouse.scheduler import Scheduler
from cdpd.warehouse.sinks import open_sink

# {users} is a list of parameters, one per user id (bound as they are: an id may hold any
# character), then the source or NULL (every source).
FIND = {
    "messages": "SELECT seq, message_id FROM messages"
    " WHERE user_id IN ({users}) AND (?1 IS NULL OR source = ?1)",
    "rejects": "SELECT id, message_id FROM rejects WHERE json_valid(payload)"
    " AND CAST(payload ->> '$.userId' AS TEXT) IN ({users}) AND (?1 IS NULL OR source = ?1)",
    "blocked_messages": "SELECT id, message_id FROM blocked_messages WHERE json_valid(payload)"
    " AND CAST(payload ->> '$.userId' AS TEXT) IN ({users}) AND (?1 IS NULL OR source = ?1)",
}
USERS_PER_STATEMENT = 500
FIND_VIOLATIONS = (
    "SELECT id FROM violations WHERE message_id IN (SELECT value FROM json_each(?1))"
    " AND (?2 IS NULL OR source = ?2)"
)
# Each takes a JSON array of keys.
DELETE = (
    "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries"
    " WHERE seq IN (SELECT value FROM json_each(?1)))",
    "DELETE FROM deliveries WHERE seq IN (SELECT value FROM json_each(?1))",
    "DELETE FROM messages WHERE seq IN (SELECT value FROM json_each(?1))",
    "DELETE FROM rejects WHERE id IN (SELECT value FROM json_each(?2))",
    "DELETE FROM blocked_messages WHERE id IN (SELECT value FROM json_each(?3))",
    "DELETE FROM violations WHERE id IN (SELECT value FROM json_each(?4))",
)
_encode = msgspec.json.encode


class Found(NamedTuple):
    """The outbox rows of the users, by key."""

    seqs: list[int]
    reject_ids: list[int]
    blocked_ids: list[int]
    violation_ids: list[int]
    message_ids: set[str]


class Erased(NamedTuple):
    rows: int
    message_ids: set[str]  # of the messages, rejects and blocked messages removed


async def erase_outbox(
    writer: OutboxWriter,
    path: Path,
    user_ids: Sequence[str],
    source: str | None,
    unsent: Callable[[list[int]], object],
    forget_samples: Callable[[Callable[[str], bool]], object] | None = None,
) -> Erased:
    """`unsent` is told the seqs of the messages deleted, before they go: delivery lanes do
    not send, nor identity resolve, what they read of them before the deletion.
    `forget_samples` clears the privacy inbox's samples in memory that show a user, just before
    the table's are (a flush that took them earlier commits before the clearing)."""
    await fence(writer)
    async with schema.connect(path, readonly=True) as conn:
        found = await find_in_outbox(conn, user_ids, source)
    unsent(found.seqs)
    rows: int = await writer.transact(functools.partial(_delete, found=found))
    if forget_samples is not None:
        forget_samples(sample_shows(user_ids))
    await writer.transact(functools.partial(_clear_samples, user_ids=user_ids, source=source))
    return Erased(rows, found.message_ids)


async def fence(writer: OutboxWriter) -> None:
    """Return once everything ingest queued before is committed: an empty append, as the
    writer commits appends in order. When the writer refuses appends (a full disk), an empty
    operation instead: it commits after what the writer holds, perhaps not all of it."""
    try:
        await writer.append([], [], now_ms())
    except OutboxUnavailable:
        await writer.transact(_nothing)


async def _nothing(_: aiosqlite.Connection) -> None:
    return None


async def find_in_outbox(
    conn: aiosqlite.Connection, user_ids: Sequence[str], source: str | None
) -> Found:
    keys: dict[str, list[int]] = {table: [] for table in FIND}
    message_ids: set[str] = set()
    for start in range(0, len(user_ids), USERS_PER_STATEMENT):
        chunk = list(user_ids[start : start + USERS_PER_STATEMENT])
        marks = ", ".join(f"?{n}" for n in range(2, len(chunk) + 2))
        for table, sql in FIND.items():
            found = await conn.execute_fetchall(sql.format(users=marks), [source, *chunk])
            rows: list[Any] = list(found)
            keys[table] += [row[0] for row in rows]
            message_ids.update(row[1] for row in rows if row[1] is not None)
    violations: list[Any] = list(
        await conn.execute_fetchall(
            FIND_VIOLATIONS, (_encode(sorted(message_ids)).decode(), source)
        )
    )
    return Found(
        keys["messages"],
        keys["rejects"],
        keys["blocked_messages"],
        [row[0] for row in violations],
        message_ids,
    )


async def _delete(conn: aiosqlite.Connection, found: Found) -> int:
    params = tuple(
        _encode(keys).decode()
        for keys in (found.seqs, found.reject_ids, found.blocked_ids, found.violation_ids)
    )
    removed = 0
    for sql in DELETE:
        cursor = await conn.execute(sql, _params(sql, params))
        removed += max(cursor.rowcount, 0)
    return removed


# A sample is masked (`cdpd.privacy.matchers.mask`: letters and digits starred but the first
# and last), so it shows an id only when the id is mostly punctuation: a sample that is an id's
# masked form, or holds the id itself, is cleared.
CLEAR_SAMPLES = (
    "UPDATE privacy_inbox SET sample = NULL WHERE sample IS NOT NULL"
    " AND (?3 IS NULL OR source = ?3)"
    " AND (sample IN (SELECT value FROM json_each(?1))"
    " OR EXISTS (SELECT 1 FROM json_each(?2) WHERE instr(sample, value) > 0))"
)


def sample_shows(user_ids: Sequence[str]) -> Callable[[str], bool]:
    """True for a sample that is a user id's masked form or holds the id itself."""
    masks = frozenset(mask(user_id) for user_id in user_ids)
    ids = tuple(user_ids)
    return lambda sample: sample in masks or any(user_id in sample for user_id in ids)


async def _clear_samples(
    conn: aiosqlite.Connection, user_ids: Sequence[str], source: str | None
) -> None:
    masks = [mask(user_id) for user_id in user_ids]
    await conn.execute(
        CLEAR_SAMPLES, (_encode(masks).decode(), _encode(list(user_ids)).decode(), source)
    )


def _params(sql: str, params: tuple[str, ...]) -> tuple[str, ...]:
    """The parameters a statement names (?1 to ?4), up to the highest it uses."""
    highest = max(int(sql[i + 1]) for i, char in enumerate(sql) if char == "?")
    return params[:highest]


# -- warehouses --------------------------------------------------------------------------------


async def erase_warehouse(
    config: Config,
    warehouse: Warehouse,
    scheduler: Scheduler,
    user_ids: Sequence[str],
    source: str | None,
) -> int:
    async with scheduler.between_syncs(warehouse.name):
        return await erase_warehouse_users(config, warehouse, user_ids, source)


async def erase_warehouse_users(
    config: Config, warehouse: Warehouse, user_ids: Sequence[str], source: str | None
) -> int:
    """In the warehouse's own load transaction: a load by any process or node waits."""
    schemas = None if source is None else {schema_name(source)}
    async with open_sink(config, warehouse) as sink:
        return await sink.erase_users(user_ids, schemas)


def warehouse_named(config: Config, name: str) -> Warehouse | None:
    return next((w for w in config.warehouses if w.name == name), None)


# -- local files -------------------------------------------------------------------------------


class _Line(msgspec.Struct):
    userId: str | int | None = None
    user_id: str | int | None = None
    messageId: str | None = None


_line_decoder = msgspec.json.Decoder(_Line)


def line_filter(user_ids: Collection[str], message_ids: Collection[str]) -> Callable[[bytes], bool]:
    """True for a line that holds one of the users (its userId) or one of the messages."""
    users = frozenset(user_ids)
    messages = frozenset(message_ids)

    def drop(line: bytes) -> bool:
        try:
            found = _line_decoder.decode(line)
        except (msgspec.MsgspecError, RecursionError):
            return False
        user = found.userId if found.userId is not None else found.user_id
        return (user is not None and str(user) in users) or found.messageId in messages

    return drop


async def erase_file(
    destination: FileDestination, running: File | None, drop: Callable[[bytes], bool]
) -> int:
    """The lines removed; through the running destination (between its writes), else on the
    files directly (nothing writes to a disabled destination's files)."""
    if running is not None:
        return await running.erase(drop)
    return await asyncio.to_thread(LogFile(Path(destination.path), fsync=True).erase, drop)
