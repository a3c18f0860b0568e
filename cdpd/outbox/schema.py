"""The outbox file: opening it with the right pragmas and migrating its schema.

The tables are a public interface (people read them with the sqlite3 shell), so every column is
plain text or integer with a name that says what it holds; README.md documents them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from cdpd.console import tables as console_tables
from cdpd.delivery import action_outcomes
from cdpd.governance import store as governance_store
from cdpd.model.pragmas import SECURE_DELETE
from cdpd.privacy import regulations_store
from cdpd.privacy import store as privacy_store

# Each entry moves the schema from version N to N + 1 (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id   TEXT NOT NULL,
        source       TEXT NOT NULL,
        type         TEXT NOT NULL,
        event        TEXT,
        user_id      TEXT,
        anonymous_id TEXT,
        received_at  TEXT NOT NULL,
        payload      TEXT NOT NULL
    );
    CREATE INDEX messages_message_id ON messages (message_id);
    CREATE TABLE rejects (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        source      TEXT,
        request_id  TEXT NOT NULL,
        reason_code TEXT NOT NULL,
        reason      TEXT NOT NULL,
        message_id  TEXT,
        payload     TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE delivery_routing (
        destination TEXT PRIMARY KEY,
        routed_seq  INTEGER NOT NULL
    );
    CREATE TABLE deliveries (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        destination      TEXT NOT NULL,
        seq              INTEGER NOT NULL,
        message_id       TEXT NOT NULL,
        order_key        TEXT,
        state            TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        created_at       TEXT NOT NULL,
        next_attempt_at  TEXT NOT NULL,
        first_attempt_at TEXT,
        last_attempt_at  TEXT,
        last_status      INTEGER,
        last_error       TEXT,
        finished_at      TEXT,
        UNIQUE (destination, seq)
    );
    CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at)
        WHERE state IN ('pending', 'retrying');
    CREATE INDEX deliveries_unfinished_by_key ON deliveries (destination, order_key, id)
        WHERE state IN ('pending', 'retrying', 'in_flight') AND order_key IS NOT NULL;
    CREATE INDEX deliveries_finished ON deliveries (state, finished_at)
        WHERE state IN ('delivered', 'dead');
    CREATE INDEX deliveries_needed_seq ON deliveries (seq)
        WHERE state IN ('pending', 'in_flight', 'retrying', 'dead');
    CREATE TABLE attempts (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id INTEGER NOT NULL,
        destination TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        started_at  TEXT NOT NULL,
        duration_ms REAL NOT NULL,
        status      INTEGER,
        error       TEXT,
        outcome     TEXT NOT NULL
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id);
    CREATE INDEX attempts_recent ON attempts (destination, started_at);
    """,
    # Consumers with positions; deliveries become a ledger of exceptions: a message delivered
    # on its first attempt leaves no row (its lane's position passed it), only failures do.
    """
    CREATE TABLE consumers (
        name        TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        done_ranges TEXT NOT NULL DEFAULT '[]',
        paused      INTEGER NOT NULL DEFAULT 0,
        updated_at  TEXT NOT NULL
    );
    INSERT INTO consumers (name, kind, seq, updated_at)
        SELECT 'delivery:' || destination, 'delivery', routed_seq,
               strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        FROM delivery_routing;
    DROP TABLE delivery_routing;
    UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END
        WHERE state = 'in_flight';
    DELETE FROM attempts WHERE delivery_id IN (
        SELECT id FROM deliveries WHERE state = 'delivered' AND attempts <= 1);
    DELETE FROM deliveries WHERE state = 'delivered' AND attempts <= 1;
    CREATE INDEX deliveries_message_id ON deliveries (message_id);
    CREATE TABLE replays (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        first_seq   INTEGER NOT NULL,
        last_seq    INTEGER NOT NULL,
        since_at    TEXT NOT NULL,
        until_at    TEXT NOT NULL,
        source      TEXT,
        created_at  TEXT NOT NULL,
        finished_at TEXT
    );
    """,
    governance_store.MIGRATION,  # violations, blocked_messages, schema_fields
    console_tables.MIGRATION,  # flow_counts, flow_latency, flow_cursors
    regulations_store.MIGRATION,  # regulations, regulation_subjects, regulation_targets, ...
    action_outcomes.MIGRATION,  # delivered_actions
    privacy_store.MIGRATION,  # privacy_inbox, privacy_inventory
)

SCHEMA_VERSION = len(MIGRATIONS)
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
STATEMENT_CACHE_SIZE = 600


class SchemaTooNew(Exception):
    """The outbox was written by a newer cdpd than this one."""


@asynccontextmanager
async def connect(
    path: Path, *, synchronous: str = "normal", max_bytes: int = 0, readonly: bool = False
) -> AsyncIterator[aiosqlite.Connection]:
    """Open the outbox, create or migrate it, and close it on exit."""
    if readonly:
        conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: the writer opens transactions itself, and a group that fits in one
        # statement is committed by that statement alone, in a single thread hop.
        # The cache has room for the writer's multi-row INSERT of every size up to its chunk.
        conn = await aiosqlite.connect(
            path, isolation_level=None, cached_statements=STATEMENT_CACHE_SIZE
        )
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            await _configure_writer(conn, synchronous=synchronous, max_bytes=max_bytes)
            await migrate(conn)
        yield conn
    finally:
        await conn.close()


async def _configure_writer(
    conn: aiosqlite.Connection, *, synchronous: str, max_bytes: int
) -> None:
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute(f"PRAGMA synchronous = {_synchronous_pragma(synchronous)}")
    await conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
    await conn.execute(SECURE_DELETE)  # a regulation's deletions leave no bytes behind
    if max_bytes:
        page_size = await _pragma_int(conn, "page_size")
        await conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}")


def _synchronous_pragma(level: str) -> str:
    levels = {"normal": "NORMAL", "full": "FULL"}
    return levels[level]


async def migrate(conn: aiosqlite.Connection) -> None:
    version = await _pragma_int(conn, "user_version")
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the outbox has schema version {version}; this cdpd knows up to {SCHEMA_VERSION}"
        )
    for number in range(version, SCHEMA_VERSION):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements(MIGRATIONS[number]):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number + 1}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise


def statements(script: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows where each ends)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


async def _pragma_int(conn: aiosqlite.Connection, name: str) -> int:
    async with conn.execute(f"PRAGMA {name}") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
