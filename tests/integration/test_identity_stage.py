"""The identity stage on a real cdpd: it catches up on a backlog after downtime, keeps its
position in its own store (mirrored for `cdpd outbox stats` and /metrics), and forgets a user
on request."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.identity import reads
from tests.helpers import WRITE_KEY, basic_auth, query
from tests.integration.test_profile_api import IDENTITY, JOURNEY, get, resolved, send

MakeConfig = Callable[..., cdpd_config.Config]


def identity_rows(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "identity.sqlite3") as conn:
        return conn.execute(sql).fetchall()


async def post(http: aiohttp.ClientSession, server: Running, count: int) -> None:
    batch = [
        {"type": "identify", "userId": f"u{n % 50}", "anonymousId": f"a{n}", "messageId": f"m{n}"}
        for n in range(count)
    ]
    headers = {"Authorization": basic_auth(WRITE_KEY)}
    async with http.post(f"{server.url}/v1/batch", json={"batch": batch}, headers=headers) as r:
        assert r.status == 200


async def test_a_backlog_from_before_identity_was_configured_is_resolved(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with running(make_config()) as plain:
        await post(http, plain, 300)
    async with running(make_config(IDENTITY)) as server:
        await resolved(server)
        assert server.identity is not None
        assert server.identity.committed_seq == 300
        assert server.identity.profile_counts() == {"users": 50, "accounts": 0}
    assert identity_rows(data_dir, "SELECT seq FROM position WHERE name = 'outbox'") == [(300,)]
    assert identity_rows(data_dir, "SELECT count(*) FROM resolutions") == [(300,)]
    # The position is mirrored into the outbox for retention and stats.
    assert query(data_dir, "SELECT kind, seq FROM consumers WHERE name = 'identity'") == [
        ("identity", 300)
    ]


async def test_a_restart_resumes_from_the_stored_position(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with running(make_config(IDENTITY)) as server:
        await send(http, server, *JOURNEY)
    async with running(make_config(IDENTITY)) as again:
        await send(
            http,
            again,
            {"type": "track", "anonymousId": "anon-1", "event": "Back", "messageId": "b"},
        )
        status, body, _ = await get(http, again, "users/profiles/user_id:user-1/events?limit=1")
        assert status == 200
        assert body["data"][0]["message_id"] == "b"
    assert identity_rows(data_dir, "SELECT count(*), count(DISTINCT seq) FROM resolutions") == [
        (5, 5)
    ]


async def test_lag_in_outbox_stats_and_metrics(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(make_config(IDENTITY)) as server:
        await post(http, server, 120)
        await resolved(server)
        async with http.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
        assert "cdpd_identity_lag_messages 0.0" in text
        assert "cdpd_identity_resolved_total 120.0" in text
        assert 'cdpd_identity_profiles{collection="users"} 50.0' in text
    config = str(tmp_path / "cdpd.toml")
    assert await asyncio.to_thread(cli.main, ["outbox", "stats", "--json", "--config", config]) == 0
    stats = msgspec.json.decode(capsys.readouterr().out.strip().splitlines()[-1])
    (identity,) = [c for c in stats["consumers"] if c["name"] == "identity"]
    assert identity["kind"] == "identity"
    assert identity["messages_behind"] == 0


async def test_forget_user_leaves_no_profile_behind(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with running(make_config(IDENTITY)) as server:
        await send(http, server, *JOURNEY)
        await send(
            http,
            server,
            {"type": "identify", "userId": "other", "traits": {"plan": "x"}, "messageId": "o"},
            {"type": "group", "userId": "user-1", "groupId": "acme", "messageId": "g"},
            {"type": "identify", "anonymousId": "anon-2", "messageId": "a2"},
            {"type": "identify", "anonymousId": "anon-2", "userId": "user-1", "messageId": "m2"},
        )
        assert server.identity is not None
        gone = await server.identity.forget_user("user-1")
        assert len(gone) == 2  # the profile and the one merged into it
        assert await server.identity.forget_user("user-1") == []
        for identifier in ("user_id:user-1", "anonymous_id:anon-1", "anonymous_id:anon-2"):
            status, _, _ = await get(http, server, f"users/profiles/{identifier}/traits")
            assert status == 404
        status, _, _ = await get(http, server, "users/profiles/user_id:other/traits")
        assert status == 200
        _, links, _ = await get(http, server, "accounts/profiles/group_id:acme/links")
        assert links["data"] == []
    for table, column in (
        ("profiles", "profile_id"),
        ("external_ids", "profile_id"),
        ("traits", "profile_id"),
        ("links", "profile_id"),
        ("resolutions", "profile_id"),
        ("merges", "into_profile_id"),
        ("merges", "profile_id"),
    ):
        placeholders = ", ".join(f"'{pid}'" for pid in gone)
        rows = identity_rows(data_dir, f"SELECT * FROM {table} WHERE {column} IN ({placeholders})")
        assert rows == [], table
    async with running(make_config(IDENTITY)) as again:  # and not back after a restart
        assert again.identity is not None
        await resolved(again)
        assert again.identity.graph.owner("users", ("user_id", "user-1")) is None
        assert again.identity.profile_counts()["users"] == 1


ADMIN = '[admin]\ntoken = "adm"\n'


async def unmerge(http: aiohttp.ClientSession, server: Running, identifier: str) -> Any:
    async with http.post(
        f"{server.url}/admin/profiles/unmerge",
        json={"identifier": identifier},
        headers={"Authorization": "Bearer adm"},
    ) as resp:
        return resp.status, await resp.json()


async def test_unmerge_splits_a_wrongly_merged_profile_and_keeps_it_apart(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with running(make_config(IDENTITY + ADMIN)) as server:
        await send(
            http,
            server,
            *JOURNEY,
            {"type": "screen", "anonymousId": "phone-1", "name": "Home", "messageId": "s1",
             "traits": {}},
            {"type": "identify", "anonymousId": "phone-1", "userId": "user-1",
             "traits": {"device": "phone"}, "messageId": "i3"},
        )  # fmt: skip
        identity = server.identity
        assert identity is not None
        merged = identity.graph.owner("users", ("user_id", "user-1"))
        assert merged == identity.graph.owner("users", ("anonymous_id", "phone-1"))
        status, answer = await unmerge(http, server, "anonymous_id:phone-1")
        assert status == 200, answer
        assert len(answer["profiles"]) == 2
        user = identity.graph.owner("users", ("user_id", "user-1"))
        phone = identity.graph.owner("users", ("anonymous_id", "phone-1"))
        assert user != phone
        assert user == identity.graph.owner("users", ("anonymous_id", "anon-1"))
        _, traits, _ = await get(http, server, "users/profiles/user_id:user-1/traits")
        assert traits["traits"]["plan"] == "pro"
        assert traits["traits"]["device"] == "phone"  # i3 carried user_id: it stays with user-1
        _, events, _ = await get(http, server, "users/profiles/anonymous_id:phone-1/events")
        assert [e["message_id"] for e in events["data"]] == ["s1"]
        # The same evidence later does not merge them again.
        await send(
            http, server, {"type": "track", "anonymousId": "phone-1", "userId": "user-1",
                           "event": "Again", "messageId": "t9"},
        )  # fmt: skip
        assert identity.graph.owner("users", ("anonymous_id", "phone-1")) == phone
        assert identity.graph.canonical(phone) == phone
        status, _ = await unmerge(http, server, "anonymous_id:nobody")
        assert status == 409
    async with running(make_config(IDENTITY + ADMIN)) as again:  # the split is durable
        assert again.identity is not None
        await resolved(again)
        graph = again.identity.graph
        assert graph.owner("users", ("anonymous_id", "phone-1")) == phone
        assert graph.owner("users", ("user_id", "user-1")) == user


async def test_unmerge_from_the_cli(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(make_config(IDENTITY + ADMIN)) as server:
        await send(
            http,
            server,
            {"type": "identify", "anonymousId": "a1", "traits": {"email": "team@x.io"},
             "messageId": "m1"},
            {"type": "identify", "userId": "alice", "anonymousId": "a1", "messageId": "m2"},
            {"type": "track", "anonymousId": "b1", "context": {"traits": {"email": "team@x.io"}},
             "event": "Shared login", "messageId": "m3"},
            {"type": "track", "anonymousId": "b1", "event": "Bob alone", "messageId": "m4"},
        )  # fmt: skip
        identity = server.identity
        assert identity is not None
        alice = identity.graph.owner("users", ("user_id", "alice"))
        assert identity.graph.owner("users", ("anonymous_id", "b1")) == alice
        argv = ["profiles", "unmerge", "anonymous_id:b1", "--url", server.url]
        argv += ["--config", str(tmp_path / "cdpd.toml")]
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert "anonymous_id:b1 split off" in capsys.readouterr().out
        bob = identity.graph.owner("users", ("anonymous_id", "b1"))
        assert bob not in (None, alice)
        _, events, _ = await get(http, server, "users/profiles/anonymous_id:b1/events")
        assert [e["message_id"] for e in events["data"]] == ["m4"]


async def test_the_ordered_record_a_follower_reads(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with running(make_config(IDENTITY)) as server:
        await send(
            http,
            server,
            {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "p"},
            {"type": "identify", "userId": "u1", "messageId": "i"},
            {"type": "track", "userId": "u1", "anonymousId": "a1", "event": "E", "messageId": "t"},
            {"type": "track", "event": "E", "anonymousId": "null", "messageId": "n"},
        )
        assert server.identity is not None
        conn = server.identity.reader
        assert conn is not None
        assert await reads.resolved_through(conn) == 4
        first = await reads.resolutions_after(conn, 0, 2)
        assert [r.message_id for r in first] == ["p", "i"]
        rest = await reads.resolutions_after(conn, first[-1].seq, 10)
        assert [r.message_id for r in rest] == ["t", "n"]
        anonymous, known = first
        assert known.profile_id != anonymous.profile_id  # at the time
        assert known.canonical_id == anonymous.profile_id  # now: merged into the older one
        assert rest[1].profile_id is None  # no identifier ("null" is blocked)
        (merge,) = await reads.merges_after(conn, 0)
        assert (merge.message_id, merge.profile_id) == ("t", known.profile_id)
        assert merge.into_profile_id == anonymous.profile_id
        assert await reads.merges_after(conn, merge.seq) == []
