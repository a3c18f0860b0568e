"""The regulation tables in the outbox: the migration that creates them, writing a new
regulation with its subjects, targets and suppressions, and the reads of the API and the CLI.
README.md ("Regulations") documents the tables. These are the only tables that keep a
regulated user's id after a deletion, as the record that the regulation exists.
"""

from __future__ import annotations

from typing import Any

import aiosqlite
import msgspec

from cdpd.privacy.regulations import (
    EFFECTS,
    FINISHED,
    INITIALIZED,
    NOT_SUPPORTED,
    RUNNING,
    UNFINISHED,
    WORKSPACE,
    Target,
    overall_status,
)

# Appended to the outbox's MIGRATIONS; self-contained, so its number may change at a merge.
MIGRATION = """
CREATE TABLE regulations (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    regulation_type TEXT NOT NULL,
    subject_type    TEXT NOT NULL,
    source          TEXT,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    finished_at     TEXT
);
CREATE TABLE regulation_subjects (
    regulation_id TEXT NOT NULL,
    subject_id    TEXT NOT NULL,
    PRIMARY KEY (regulation_id, subject_id)
) WITHOUT ROWID;
CREATE TABLE regulation_targets (
    regulation_id    TEXT NOT NULL,
    target           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL,
    rows_removed     INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    first_attempt_at TEXT,
    next_attempt_at  TEXT NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    finished_at      TEXT,
    PRIMARY KEY (regulation_id, target)
) WITHOUT ROWID;
CREATE INDEX regulation_targets_due ON regulation_targets (next_attempt_at)
    WHERE status IN ('INITIALIZED', 'RUNNING');
CREATE TABLE suppressions (
    user_id       TEXT NOT NULL,
    source        TEXT NOT NULL,
    regulation_id TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (user_id, source)
) WITHOUT ROWID;
"""

INSERT_REGULATION = """
INSERT INTO regulations (id, regulation_type, subject_type, source, status, created_at,
                         finished_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
INSERT_SUBJECT = (
    "INSERT OR IGNORE INTO regulation_subjects (regulation_id, subject_id) VALUES (?, ?)"
)
INSERT_TARGET = """
INSERT INTO regulation_targets (regulation_id, target, kind, status, next_attempt_at, last_error,
                                finished_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
SUPPRESS = """
INSERT INTO suppressions (user_id, source, regulation_id, created_at) VALUES (?, ?, ?, ?)
ON CONFLICT (user_id, source) DO NOTHING
"""
# A workspace UNSUPPRESS lifts the user's suppressions everywhere; a source's, only its own
# (a workspace suppression wins over it).
UNSUPPRESS_EVERYWHERE = "DELETE FROM suppressions WHERE user_id = ?"
UNSUPPRESS_SOURCE = "DELETE FROM suppressions WHERE user_id = ? AND source = ?"
SELECT_SUPPRESSIONS = "SELECT user_id, source FROM suppressions"


class NewRegulation(msgspec.Struct, frozen=True):
    id: str
    regulation_type: str
    subject_type: str
    subject_ids: list[str]
    source: str | None
    created_at: str
    targets: list[Target]


async def insert(conn: aiosqlite.Connection, new: NewRegulation) -> None:
    """Write the regulation, its subjects, its targets and its suppression changes (to run in
    one transaction: the writer's, or the CLI's own)."""
    status = (
        NOT_SUPPORTED if new.subject_type != "USER_ID" else INITIALIZED if new.targets else FINISHED
    )
    finished_at = None if status == INITIALIZED else new.created_at
    await conn.execute(
        INSERT_REGULATION,
        (
            new.id,
            new.regulation_type,
            new.subject_type,
            new.source,
            status,
            new.created_at,
            finished_at,
        ),
    )
    await conn.executemany(INSERT_SUBJECT, [(new.id, subject) for subject in new.subject_ids])
    if status == NOT_SUPPORTED:
        return
    await conn.executemany(
        INSERT_TARGET,
        [
            (
                new.id,
                t.name,
                t.kind,
                t.status,
                new.created_at,
                t.note,
                None if t.status in UNFINISHED else new.created_at,
            )
            for t in new.targets
        ],
    )
    await _change_suppressions(conn, new)


async def _change_suppressions(conn: aiosqlite.Connection, new: NewRegulation) -> None:
    suppress = EFFECTS[new.regulation_type].suppress
    scope = new.source or WORKSPACE
    if suppress:
        await conn.executemany(
            SUPPRESS, [(user, scope, new.id, new.created_at) for user in new.subject_ids]
        )
    elif suppress is False:
        if new.source is None:
            await conn.executemany(UNSUPPRESS_EVERYWHERE, [(u,) for u in new.subject_ids])
        else:
            await conn.executemany(UNSUPPRESS_SOURCE, [(u, new.source) for u in new.subject_ids])


async def suppressions(conn: aiosqlite.Connection) -> list[tuple[str, str]]:
    rows: list[Any] = list(await conn.execute_fetchall(SELECT_SUPPRESSIONS))
    return [(user, source) for user, source in rows]


async def last_seq(conn: aiosqlite.Connection) -> int:
    rows: list[Any] = list(
        await conn.execute_fetchall("SELECT coalesce(max(seq), 0) FROM regulations")
    )
    return int(rows[0][0])


async def start_new(conn: aiosqlite.Connection, after_seq: int) -> None:
    """Regulations written since `after_seq` whose suppressions are now in force: those with
    work to do are RUNNING (the others were written FINISHED)."""
    await conn.execute(
        "UPDATE regulations SET status = ? WHERE seq > ? AND status = ?",
        (RUNNING, after_seq, INITIALIZED),
    )


# -- the worker's reads and writes -------------------------------------------------------------


class DueTarget(msgspec.Struct, frozen=True):
    regulation_id: str
    regulation_type: str
    source: str | None
    target: str
    kind: str
    attempts: int
    first_attempt_at: str | None


SELECT_DUE = """
SELECT t.regulation_id, r.regulation_type, r.source, t.target, t.kind, t.attempts,
       t.first_attempt_at
FROM regulation_targets AS t JOIN regulations AS r ON r.id = t.regulation_id
WHERE t.status IN ('INITIALIZED', 'RUNNING') AND t.next_attempt_at <= ?
ORDER BY r.seq, t.kind != 'outbox', t.kind != 'identity', t.target
"""
NEXT_DUE_AT = (
    "SELECT min(next_attempt_at) FROM regulation_targets WHERE status IN ('INITIALIZED', 'RUNNING')"
)


async def due(conn: aiosqlite.Connection, now_at: str) -> list[DueTarget]:
    rows: list[Any] = list(await conn.execute_fetchall(SELECT_DUE, (now_at,)))
    return [DueTarget(*row) for row in rows]


async def next_due_at(conn: aiosqlite.Connection) -> str | None:
    rows: list[Any] = list(await conn.execute_fetchall(NEXT_DUE_AT))
    return rows[0][0] if rows else None


async def lanes_passed(conn: aiosqlite.Connection) -> int | None:
    """The seq every running delivery lane and replay job has finished (None: none runs)."""
    rows: list[Any] = list(
        await conn.execute_fetchall(
            "SELECT min(seq) FROM consumers WHERE kind IN ('delivery', 'replay') AND NOT paused"
        )
    )
    return rows[0][0] if rows and rows[0][0] is not None else None


async def subjects(conn: aiosqlite.Connection, regulation_id: str) -> list[str]:
    rows: list[Any] = list(
        await conn.execute_fetchall(
            "SELECT subject_id FROM regulation_subjects WHERE regulation_id = ?"
            " ORDER BY subject_id",
            (regulation_id,),
        )
    )
    return [row[0] for row in rows]


async def target_status(conn: aiosqlite.Connection, regulation_id: str, target: str) -> str | None:
    rows: list[Any] = list(
        await conn.execute_fetchall(
            "SELECT status FROM regulation_targets WHERE regulation_id = ? AND target = ?",
            (regulation_id, target),
        )
    )
    return rows[0][0] if rows else None


class TargetUpdate(msgspec.Struct, frozen=True):
    """The outcome of one attempt at one target."""

    regulation_id: str
    target: str
    status: str
    attempts: int
    first_attempt_at: str
    next_attempt_at: str
    rows_removed: int = 0
    last_status: int | None = None
    last_error: str | None = None
    finished_at: str | None = None


async def record(
    conn: aiosqlite.Connection, update: TargetUpdate, overall: str | None = None
) -> str:
    """Store one attempt's outcome and the regulation's status: `overall`, else the one that
    follows from all of its targets'; returns that status."""
    await conn.execute(
        "UPDATE regulation_targets SET status = ?, attempts = ?, first_attempt_at = ?,"
        " next_attempt_at = ?, rows_removed = rows_removed + ?, last_status = ?,"
        " last_error = ?, finished_at = ? WHERE regulation_id = ? AND target = ?",
        (
            update.status,
            update.attempts,
            update.first_attempt_at,
            update.next_attempt_at,
            update.rows_removed,
            update.last_status,
            update.last_error,
            update.finished_at,
            update.regulation_id,
            update.target,
        ),
    )
    rows: list[Any] = list(
        await conn.execute_fetchall(
            "SELECT status FROM regulation_targets WHERE regulation_id = ?",
            (update.regulation_id,),
        )
    )
    status = overall_status([row[0] for row in rows]) if overall is None else overall
    finished = None if status == RUNNING else update.next_attempt_at
    await conn.execute(
        "UPDATE regulations SET status = ?, finished_at = ? WHERE id = ?",
        (status, finished, update.regulation_id),
    )
    return status


# -- what the API and the CLI show --------------------------------------------------------------


class TargetView(msgspec.Struct, frozen=True):
    target: str
    kind: str
    status: str
    rowsRemoved: int
    attempts: int
    nextAttemptAt: str | None
    lastStatus: int | None
    lastError: str | None
    finishedAt: str | None


class RegulationView(msgspec.Struct, frozen=True):
    id: str
    regulationType: str
    subjectType: str
    sourceId: str | None
    overallStatus: str
    createdAt: str
    finishedAt: str | None
    subjectCount: int
    targets: list[TargetView] = []


class SuppressionView(msgspec.Struct, frozen=True):
    userId: str
    sourceId: str | None
    regulateId: str
    createdAt: str


SELECT_REGULATION = """
SELECT id, regulation_type, subject_type, source, status, created_at, finished_at,
       (SELECT count(*) FROM regulation_subjects WHERE regulation_id = id)
FROM regulations
"""


async def show(conn: aiosqlite.Connection, regulation_id: str) -> RegulationView | None:
    rows: list[Any] = list(
        await conn.execute_fetchall(SELECT_REGULATION + " WHERE id = ?", (regulation_id,))
    )
    if not rows:
        return None
    targets: list[Any] = list(
        await conn.execute_fetchall(
            "SELECT target, kind, status, rows_removed, attempts,"
            " CASE WHEN status IN ('INITIALIZED', 'RUNNING') THEN next_attempt_at END,"
            " last_status, last_error, finished_at FROM regulation_targets"
            " WHERE regulation_id = ? ORDER BY kind != 'outbox', kind != 'identity', kind, target",
            (regulation_id,),
        )
    )
    found = RegulationView(*rows[0])
    return msgspec.structs.replace(found, targets=[TargetView(*t) for t in targets])


async def listing(
    conn: aiosqlite.Connection,
    *,
    status: str | None,
    source: str | None,
    after_id: str | None,
    count: int,
) -> list[RegulationView]:
    """Regulations, newest first, `count` of them after the cursor `after_id`."""
    where, params = ["1 = 1"], []
    for column, value in (("status", status), ("source", source)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if after_id is not None:
        where.append("seq < (SELECT seq FROM regulations WHERE id = ?)")
        params.append(after_id)
    sql = SELECT_REGULATION + f" WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
    rows: list[Any] = list(await conn.execute_fetchall(sql, [*params, count]))
    return [RegulationView(*row) for row in rows]


async def suppression_listing(
    conn: aiosqlite.Connection, *, after_user: str | None, count: int
) -> list[SuppressionView]:
    sql = (
        "SELECT user_id, nullif(source, ?), regulation_id, created_at FROM suppressions"
        " WHERE user_id > ? ORDER BY user_id, source LIMIT ?"
    )
    rows: list[Any] = list(await conn.execute_fetchall(sql, (WORKSPACE, after_user or "", count)))
    return [SuppressionView(*row) for row in rows]
