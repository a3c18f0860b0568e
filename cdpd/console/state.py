"""The console's own SQLite file (`<data_dir>/console.sqlite3`): people and their password
hashes, roles per workspace, API tokens (hashed), sessions and the sign-in log.

Kept apart from the outbox so that `cdpd users` and `cdpd tokens` work whether or not the
daemon runs, and so that no credential ever sits next to the messages. The tables are a public
interface, documented in README.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import msgspec

from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox import schema

SCHEMA = """
CREATE TABLE people (
    name                TEXT PRIMARY KEY,
    password_hash       TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    password_changed_at TEXT NOT NULL
);
CREATE TABLE roles (
    person    TEXT NOT NULL REFERENCES people (name) ON DELETE CASCADE,
    workspace TEXT NOT NULL,
    role      TEXT NOT NULL CHECK (role IN ('owner', 'member', 'read-only')),
    PRIMARY KEY (person, workspace)
);
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    workspace    TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'member', 'read-only')),
    token_sha256 TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);
CREATE TABLE sessions (
    id_sha256  TEXT PRIMARY KEY,
    person     TEXT NOT NULL REFERENCES people (name) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE signins (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    person    TEXT NOT NULL,
    address   TEXT,
    succeeded INTEGER NOT NULL
);
CREATE INDEX signins_at ON signins (at);
"""
SCHEMA_VERSION = 1


class Person(msgspec.Struct, frozen=True):
    name: str
    password_hash: str
    roles: dict[str, str]  # workspace -> role


class Token(msgspec.Struct, frozen=True):
    id: int
    name: str
    workspace: str
    role: str
    prefix: str
    created_at: str
    revoked_at: str | None


class Session(msgspec.Struct, frozen=True):
    person: str
    csrf_token: str
    expires_at: str


def sha256(text: str) -> str:
    """Tokens and session ids are random 256-bit values: a plain hash protects them at rest
    (a slow hash is for guessable secrets, the passwords)."""
    return hashlib.sha256(text.encode()).hexdigest()


@asynccontextmanager
async def connect(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await _migrate(conn)
        yield conn
    finally:
        await conn.close()


async def _migrate(conn: aiosqlite.Connection) -> None:
    if await _version(conn) >= SCHEMA_VERSION:
        return
    await conn.execute("BEGIN IMMEDIATE")
    try:
        if await _version(conn) < 1:
            for statement in schema.statements(SCHEMA):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


async def _version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def _now() -> str:
    return format_ms(now_ms())


# -- people ----------------------------------------------------------------------------------


async def add_person(conn: aiosqlite.Connection, name: str, password_hash: str) -> None:
    at = _now()
    await conn.execute(
        "INSERT INTO people (name, password_hash, created_at, password_changed_at)"
        " VALUES (?, ?, ?, ?)",
        (name, password_hash, at, at),
    )


async def set_password(conn: aiosqlite.Connection, name: str, password_hash: str) -> bool:
    """Change the hash and end every session of the person; False when there is no such one."""
    cursor = await conn.execute(
        "UPDATE people SET password_hash = ?, password_changed_at = ? WHERE name = ?",
        (password_hash, _now(), name),
    )
    await conn.execute("DELETE FROM sessions WHERE person = ?", (name,))
    return cursor.rowcount > 0


async def remove_person(conn: aiosqlite.Connection, name: str) -> bool:
    cursor = await conn.execute("DELETE FROM people WHERE name = ?", (name,))
    return cursor.rowcount > 0


async def set_role(conn: aiosqlite.Connection, name: str, workspace: str, role: str) -> None:
    await conn.execute(
        "INSERT INTO roles (person, workspace, role) VALUES (?, ?, ?)"
        " ON CONFLICT (person, workspace) DO UPDATE SET role = excluded.role",
        (name, workspace, role),
    )


async def drop_role(conn: aiosqlite.Connection, name: str, workspace: str) -> bool:
    cursor = await conn.execute(
        "DELETE FROM roles WHERE person = ? AND workspace = ?", (name, workspace)
    )
    return cursor.rowcount > 0


async def person(conn: aiosqlite.Connection, name: str) -> Person | None:
    rows = await conn.execute_fetchall("SELECT password_hash FROM people WHERE name = ?", (name,))
    if not rows:
        return None
    roles = await conn.execute_fetchall(
        "SELECT workspace, role FROM roles WHERE person = ?", (name,)
    )
    return Person(name, next(iter(rows))[0], {w: r for w, r in roles})


async def people(conn: aiosqlite.Connection) -> list[Person]:
    names = await conn.execute_fetchall("SELECT name FROM people ORDER BY name")
    found = [await person(conn, name) for (name,) in names]
    return [p for p in found if p is not None]


# -- API tokens ------------------------------------------------------------------------------


async def add_token(
    conn: aiosqlite.Connection, name: str, workspace: str, role: str, token: str
) -> int:
    cursor = await conn.execute(
        "INSERT INTO api_tokens (name, workspace, role, token_sha256, prefix, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (name, workspace, role, sha256(token), token[:12], _now()),
    )
    return int(cursor.lastrowid or 0)


async def tokens(conn: aiosqlite.Connection) -> list[Token]:
    rows = await conn.execute_fetchall(
        "SELECT id, name, workspace, role, prefix, created_at, revoked_at FROM api_tokens"
        " ORDER BY id"
    )
    return [Token(*row) for row in rows]


async def revoke_token(conn: aiosqlite.Connection, token_id: int) -> bool:
    cursor = await conn.execute(
        "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        (_now(), token_id),
    )
    return cursor.rowcount > 0


async def token_scope(conn: aiosqlite.Connection, token: str) -> tuple[str, str] | None:
    """The (workspace, role) of a live token, or None."""
    rows = await conn.execute_fetchall(
        "SELECT workspace, role FROM api_tokens WHERE token_sha256 = ? AND revoked_at IS NULL",
        (sha256(token),),
    )
    for workspace, role in rows:
        return str(workspace), str(role)
    return None


# -- sessions and sign-ins -------------------------------------------------------------------


async def add_session(
    conn: aiosqlite.Connection, session_id: str, name: str, csrf_token: str, ttl_s: int
) -> None:
    at = now_ms()
    await conn.execute(
        "INSERT INTO sessions (id_sha256, person, csrf_token, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (sha256(session_id), name, csrf_token, format_ms(at), format_ms(at + ttl_s * 1000)),
    )


async def session(conn: aiosqlite.Connection, session_id: str) -> Session | None:
    rows = await conn.execute_fetchall(
        "SELECT person, csrf_token, expires_at FROM sessions"
        " WHERE id_sha256 = ? AND expires_at > ?",
        (sha256(session_id), _now()),
    )
    for row in rows:
        return Session(*row)
    return None


async def end_session(conn: aiosqlite.Connection, session_id: str) -> None:
    await conn.execute("DELETE FROM sessions WHERE id_sha256 = ?", (sha256(session_id),))
    await conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (_now(),))


async def log_signin(
    conn: aiosqlite.Connection, name: str, address: str | None, *, succeeded: bool
) -> None:
    await conn.execute(
        "INSERT INTO signins (at, person, address, succeeded) VALUES (?, ?, ?, ?)",
        (_now(), name, address, int(succeeded)),
    )
