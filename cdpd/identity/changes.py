"""Change numbers in the identity store, so that Profiles Sync reads only what changed.

Every write transaction takes the next change number (the `position` row `changes`), and
every row it inserts into `profiles`, `external_ids`, `traits` or `merges`, or changes in a
way Profiles Sync shows (a profile's `canonical_id`, an identifier's owner, a trait's value),
carries it in `change_seq`. What is deleted leaves no row to carry a number, so the profile it
belonged to goes into `removals` with the change that deleted it: at that change every
profile row, identifier and trait of that profile was deleted or written again, so a reader
past it clears what it holds of the profile and takes the profile's rows changed since.

A deletion regulation (`store.delete_profiles`) keeps no id of what it deletes, not even here:
it removes the profiles' `removals` rows too, and records only its change number (the
`position` row `forgets`). A reader past it drops what it holds of profiles the store no longer
has.
"""

from __future__ import annotations

import sqlite3

VERSION = 3
NEXT_CHANGE = "UPDATE position SET seq = seq + 1 WHERE name = 'changes'"
FORGOT = (
    "UPDATE position SET seq = (SELECT seq FROM position WHERE name = 'changes')"
    " WHERE name = 'forgets'"
)

# Version 3. Existing rows are numbered one by one (`backfill`), so that a first sync can read
# them in chunks like any later change.
SCHEMA = """
ALTER TABLE profiles ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE external_ids ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE traits ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE merges ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX profiles_change ON profiles (change_seq);
CREATE INDEX external_ids_change ON external_ids (change_seq);
CREATE INDEX traits_change ON traits (change_seq);
CREATE INDEX merges_change ON merges (change_seq);
CREATE TABLE removals (
    profile_id TEXT PRIMARY KEY,
    change_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX removals_change ON removals (change_seq);
INSERT INTO position (name, seq) VALUES ('changes', 0);
INSERT INTO position (name, seq) VALUES ('forgets', 0);
"""

# Each table's key, to number its rows in a stable order.
_KEYS = {
    "profiles": "profile_id",
    "external_ids": "collection, type, value",
    "traits": "profile_id, name",
    "merges": "id",
}


def add_change_numbers(conn: sqlite3.Connection) -> None:
    """Migration 2 -> 3, in one transaction: the `change_seq` columns, `removals`, and every
    existing row numbered."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        backfill(conn)
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def backfill(conn: sqlite3.Connection) -> None:
    """Number every row 1, 2, 3, ... across the tables, and the counter after the last."""
    given = 0
    for table, key in _KEYS.items():
        columns = key.split(", ")
        mine = ", ".join(f"{table}.{c}" for c in columns)
        theirs = ", ".join(f"numbered.{c}" for c in columns)
        conn.execute(
            f"UPDATE {table} SET change_seq = numbered.n + ? FROM"  # noqa: S608
            f" (SELECT {key}, row_number() OVER (ORDER BY {key}) AS n FROM {table}) AS numbered"
            f" WHERE ({mine}) = ({theirs})",
            (given,),
        )
        given += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
    conn.execute("UPDATE position SET seq = ? WHERE name = 'changes'", (given,))


def last_change(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT seq FROM position WHERE name = 'changes'").fetchone()[0])
