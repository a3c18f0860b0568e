"""Audience sizes and changes per day, kept as memberships change: pages and commands read a
definition's size and its daily entries and exits from a few rows instead of counting a
million.

SQLite triggers keep both tables, so every statement that writes `engage_values` (an entry, an
exit, a merge rewriting a profile's values, a forgotten profile's rows deleted) or appends to
`engage_changes` moves the counts in its own transaction, whichever code path runs it. Write
`engage_values` with INSERT ... ON CONFLICT DO UPDATE, never INSERT OR REPLACE: the row a
REPLACE deletes fires no delete trigger, and the size would drift.

    engage_sizes        key, size: rows of `engage_values` per definition (an audience's
                        members, users and accounts; a computed trait's profiles with a value)
    engage_change_days  key, day (UTC, YYYY-MM-DD), entered, exited, computed: the changes
                        `engage_changes` recorded per definition and day

Schema version 3 added them; `add` migrates a version 2 file and counts what it holds.
"""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE engage_sizes (
    key  TEXT PRIMARY KEY,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE engage_change_days (
    key      TEXT NOT NULL,
    day      TEXT NOT NULL,
    entered  INTEGER NOT NULL,
    exited   INTEGER NOT NULL,
    computed INTEGER NOT NULL,
    PRIMARY KEY (key, day)
) WITHOUT ROWID;
CREATE TRIGGER engage_values_counted AFTER INSERT ON engage_values BEGIN
    INSERT INTO engage_sizes (key, size) VALUES (new.key, 1)
        ON CONFLICT (key) DO UPDATE SET size = size + 1;
END;
CREATE TRIGGER engage_values_uncounted AFTER DELETE ON engage_values BEGIN
    UPDATE engage_sizes SET size = size - 1 WHERE key = old.key;
END;
CREATE TRIGGER engage_changes_counted AFTER INSERT ON engage_changes BEGIN
    INSERT INTO engage_change_days (key, day, entered, exited, computed)
        VALUES (new.key, date(new.at_ms / 1000, 'unixepoch'), new.change = 'entered',
                new.change = 'exited', new.change = 'computed')
        ON CONFLICT (key, day) DO UPDATE SET entered = entered + excluded.entered,
            exited = exited + excluded.exited, computed = computed + excluded.computed;
END;
"""
FILL = """
INSERT INTO engage_sizes (key, size) SELECT key, count(*) FROM engage_values GROUP BY key;
INSERT INTO engage_change_days (key, day, entered, exited, computed)
    SELECT key, date(at_ms / 1000, 'unixepoch'), sum(change = 'entered'),
           sum(change = 'exited'), sum(change = 'computed')
    FROM engage_changes GROUP BY 1, 2;
"""


def add(conn: sqlite3.Connection) -> None:
    """Migration 2 -> 3: the tables, their triggers, and the counts of what the file holds,
    in one transaction."""
    conn.executescript(f"BEGIN; {SCHEMA} {FILL} PRAGMA user_version = 3; COMMIT;")
