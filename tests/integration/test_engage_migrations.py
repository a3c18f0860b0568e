"""Files written before the Engage stage existed open with the tables it added."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cdpd.engage import tables
from cdpd.engage.store import EngageStore
from cdpd.engage.syncs import SCHEMA as SYNCS
from cdpd.identity import store as identity_store


def test_an_identity_store_of_version_1_gains_the_forgotten_record(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(f"{identity_store.SCHEMA} PRAGMA user_version = 1;")
    with identity_store.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == identity_store.SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM forgotten").fetchone() == (0,)


async def test_an_engage_store_of_version_1_gains_its_position(tmp_path: Path) -> None:
    path = tmp_path / "engage.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(f"{tables.SCHEMA} {SYNCS} PRAGMA user_version = 1;")
    store = await EngageStore.open(path)
    try:
        assert await store.position() == {}
        await store.process([], 0, position={"resolutions": 7})
        assert await store.position() == {"resolutions": 7}
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
