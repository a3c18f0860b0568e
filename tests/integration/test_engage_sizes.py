"""Engage keeps each definition's size and its changes per day as memberships change
(`engage_sizes`, `engage_change_days`): after entries, exits, merges, deletions and account
changes they equal what counting `engage_values` and `engage_changes` gives, and a version 2
file is migrated with its existing memberships counted."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from cdpd.engage.syncs import SCHEMA as SYNCS
from cdpd.engage.tables import POSITION, SCHEMA
from tests.integration.test_engage_store import DAY, HOUR, T0, open_store, track

Counts = tuple[dict[str, int], dict[tuple[str, str], tuple[int, int, int]]]


def kept(path: Path) -> Counts:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        sizes = dict(conn.execute("SELECT key, size FROM engage_sizes WHERE size > 0"))
        days = {
            (key, day): (entered, exited, computed)
            for key, day, entered, exited, computed in conn.execute(
                "SELECT key, day, entered, exited, computed FROM engage_change_days"
            )
        }
    return sizes, days


def counted(path: Path) -> Counts:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        sizes = dict(conn.execute("SELECT key, count(*) FROM engage_values GROUP BY key"))
        days = {
            (key, day): (entered, exited, computed)
            for key, day, entered, exited, computed in conn.execute(
                "SELECT key, date(at_ms / 1000, 'unixepoch'), sum(change = 'entered'),"
                " sum(change = 'exited'), sum(change = 'computed') FROM engage_changes"
                " GROUP BY 1, 2"
            )
        }
    return sizes, days


async def test_sizes_and_days_follow_every_membership_write(tmp_path: Path) -> None:
    path = tmp_path / "engage.sqlite3"
    store = await open_store(path)
    try:
        for n in range(4):
            await store.apply(f"p{n}", track("Order Completed", T0, user=f"u{n}"), T0)
        assert kept(path) == counted(path)
        assert kept(path)[0] == {"recent_buyers": 4, "order_count": 4}
        # a day later the same buyers order again: only the trait's values change
        await store.apply("p0", track("Order Completed", T0 + DAY), T0 + DAY)
        assert kept(path) == counted(path)
        # the 7-day window passes: everyone exits the audience without an event
        await store.recheck_due(T0 + 9 * DAY)
        assert kept(path) == counted(path)
        assert kept(path)[0] == {"order_count": 4}
        await store.apply("p1", track("Order Completed", T0 + 9 * DAY, user="u1"), T0 + 9 * DAY)
        await store.apply("p2", track("Order Completed", T0 + 9 * DAY, user="u2"), T0 + 9 * DAY)
        # a merge deletes one profile's rows and rewrites the other's, recording no change
        await store.merge("p2", "p1", T0 + 9 * DAY)
        # a deletion removes rows silently
        await store.forget("p3")
        assert kept(path) == counted(path)
        assert kept(path)[0] == {"recent_buyers": 1, "order_count": 2}
        # account audiences count accounts
        await store.apply("p1", {"type": "group", "userId": "u1", "groupId": "acme"}, T0)
        await store.apply(
            "p1", {"type": "identify", "userId": "u1", "traits": {"role": "admin"}}, T0
        )
        assert kept(path) == counted(path)
        assert kept(path)[0]["admins"] == 1
        summary = await store.summary("recent_buyers")
        assert summary is not None
        assert (summary.size, summary.entries, summary.exits) == (1, 6, 4)
    finally:
        await store.close()


async def test_a_version_2_file_is_migrated_with_its_memberships_counted(tmp_path: Path) -> None:
    path = tmp_path / "engage.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(f"{SCHEMA} {SYNCS} {POSITION} PRAGMA user_version = 2;")
        conn.executemany(
            "INSERT INTO engage_values VALUES ('users', 'recent_buyers', ?, 'true', ?)",
            [(f"p{n}", T0) for n in range(3)],
        )
        conn.executemany(
            "INSERT INTO engage_changes (collection, key, id, change, value, at_ms)"
            " VALUES ('users', 'recent_buyers', ?, ?, 'true', ?)",
            [("p0", "entered", T0 - DAY), ("p1", "entered", T0), ("p2", "entered", T0 + HOUR)],
        )
        conn.commit()
    store = await open_store(path)
    try:
        assert kept(path) == counted(path)
        assert kept(path)[0] == {"recent_buyers": 3}
        assert kept(path)[1] == {
            ("recent_buyers", "2026-02-28"): (1, 0, 0),
            ("recent_buyers", "2026-03-01"): (2, 0, 0),
        }
        await store.apply("p9", track("Order Completed", T0, user="u9"), T0)
        assert kept(path) == counted(path)
        assert kept(path)[0] == {"recent_buyers": 4, "order_count": 1}
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
