"""The console's people and sessions (`ConsoleState`, and `People` for `cdpd users`): one suite
that every backend runs, the state file of the SQLite backend and the buckets of the JetStream
backend (a real three-server cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cdpd.cluster.console_state import people_in_cluster
from cdpd.console import state
from cdpd.console.local import SqliteState
from tests.cluster_support import jetstream_config, jetstream_text
from tests.jetstream_cluster import jetstream_cluster


@pytest.fixture(params=["sqlite", "jetstream"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        async with state.connect(tmp_path / "console.sqlite3") as conn:
            yield SqliteState(conn)
        return
    async with jetstream_cluster(tmp_path / "jetstream") as cluster:
        text = jetstream_text(tmp_path / "var", cluster.urls)
        async with people_in_cluster(jetstream_config(tmp_path / "cdpd.toml", text)) as people:
            yield people


async def test_a_person_is_added_once_with_a_role_and_gains_more(store: Any) -> None:
    assert await store.person("zoë ada") is None
    assert await store.add_person("zoë ada", "hash-1", "acme", "owner")
    assert not await store.add_person("zoë ada", "hash-2", "acme", "member")
    assert await store.set_role("zoë ada", "globex", "read-only")
    assert not await store.set_role("nobody", "acme", "owner")
    found = await store.person("zoë ada")
    assert (found.name, found.password_hash) == ("zoë ada", "hash-1")
    assert found.roles == {"acme": "owner", "globex": "read-only"}
    assert [p.name for p in await store.people()] == ["zoë ada"]


async def test_a_session_lives_until_it_ends_or_expires(store: Any) -> None:
    assert await store.add_person("ada", "hash", "acme", "member")
    await store.add_session("session-1", "ada", "csrf-1", 3600)
    await store.add_session("session-2", "ada", "csrf-2", 0)  # expired at once
    found = await store.session("session-1")
    assert (found.person, found.csrf_token) == ("ada", "csrf-1")
    assert await store.session("session-2") is None
    assert await store.session("no such session") is None
    await store.end_session("session-1")
    assert await store.session("session-1") is None
    await store.log_signin("ada", "127.0.0.1", succeeded=True)


async def test_a_new_password_or_removal_ends_the_persons_sessions(store: Any) -> None:
    assert await store.add_person("ada", "hash", "acme", "member")
    assert await store.add_person("bob", "hash", "acme", "member")
    await store.add_session("ada-1", "ada", "c", 3600)
    await store.add_session("bob-1", "bob", "c", 3600)
    assert await store.set_password("ada", "new-hash")
    assert (await store.person("ada")).password_hash == "new-hash"
    assert await store.session("ada-1") is None
    assert await store.session("bob-1") is not None
    assert await store.remove_person("bob")
    assert await store.session("bob-1") is None
    assert await store.person("bob") is None
    assert not await store.remove_person("bob")
    assert not await store.set_password("bob", "x")
