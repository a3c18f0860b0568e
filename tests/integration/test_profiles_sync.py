"""Profiles Sync: after a sync, each warehouse holds Segment's Profiles Sync tables for the
profiles the identity stage resolved (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.identity.profiles_sync import SCHEMA
from tests.helpers import WarehouseProbe
from tests.integration.test_profile_api import IDENTITY, JOURNEY, send

MERGE = (
    {"type": "screen", "anonymousId": "phone-1", "name": "Home", "messageId": "s1"},
    {"type": "identify", "anonymousId": "phone-1", "userId": "user-1", "messageId": "i3"},
)


async def test_profiles_sync_tables(
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
) -> None:
    async with running(make_config(IDENTITY + warehouse.toml)) as server:
        await send(http, server, *JOURNEY, *MERGE)
        identity = server.identity
        assert identity is not None
        canonical = identity.graph.owner("users", ("user_id", "user-1"))
        first = await server.warehouses.sync_now("wh")
        assert first.status == "success", first.error
        again = await server.warehouses.sync_now("wh")  # loading again adds nothing
        assert again.status == "success", again.error
    assert {
        "id_graph_updates",
        "external_id_mapping_updates",
        "profile_traits_updates",
        "profile_merges",
        "user_identifiers",
        "user_traits",
    } <= await warehouse.tables(SCHEMA)
    merges = await warehouse.rows(SCHEMA, "profile_merges", "segment_id, canonical_segment_id")
    assert len(merges) == 2
    assert {row["canonical_segment_id"] for row in merges} == {canonical}
    graph = await warehouse.rows(
        SCHEMA, "id_graph_updates", "segment_id, canonical_segment_id, triggering_event_message_id"
    )
    assert len(graph) == 3  # two profiles created, one merge
    (merge,) = [row for row in graph if row["segment_id"] != row["canonical_segment_id"]]
    assert merge["triggering_event_message_id"] == "i3"
    identifiers = await warehouse.rows(
        SCHEMA, "user_identifiers", "canonical_segment_id, type, external_id_value"
    )
    assert {(r["type"], r["external_id_value"]) for r in identifiers} == {
        ("user_id", "user-1"),
        ("anonymous_id", "anon-1"),
        ("anonymous_id", "phone-1"),
        ("email", "jane+x@example.com"),
    }
    assert {r["canonical_segment_id"] for r in identifiers} == {canonical}
    mappings = await warehouse.rows(
        SCHEMA, "external_id_mapping_updates", "segment_id, external_id_value"
    )
    phone = next(r for r in mappings if r["external_id_value"] == "phone-1")
    assert phone["segment_id"] != canonical  # the profile it joined then, before the merge
    traits = await warehouse.rows(SCHEMA, "user_traits", "name, value")
    assert {(r["name"], r["value"]) for r in traits} == {
        ("email", '"jane+x@example.com"'),
        ("plan", '"pro"'),
        ("name", None),  # removed by a null
    }
    assert await warehouse.count(SCHEMA, "profile_traits_updates") == 3
    for table in ("id_graph_updates", "user_identifiers", "user_traits"):  # times fit
        assert None not in {r["timestamp"] for r in await warehouse.rows(SCHEMA, table)}
    assert "cdpd_discards" not in await warehouse.tables(SCHEMA)


async def test_event_tables_carry_the_segment_id_at_event_time(
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
) -> None:
    async with running(make_config(IDENTITY + warehouse.toml)) as server:
        await send(http, server, *JOURNEY, *MERGE)
        identity = server.identity
        assert identity is not None
        user = identity.graph.owner("users", ("user_id", "user-1"))
        report = await server.warehouses.sync_now("wh")
        assert report.status == "success", report.error
    (page,) = await warehouse.rows("website", "pages", "id, segment_id")
    assert page == {"id": "p1", "segment_id": user}
    (track,) = await warehouse.rows("website", "tracks", "id, segment_id")
    assert track["segment_id"] == user
    (screen,) = await warehouse.rows("website", "screens", "id, segment_id")
    assert screen["segment_id"] not in (None, user)  # the phone's own profile, merged since
    merged = await warehouse.rows(SCHEMA, "profile_merges", "segment_id, canonical_segment_id")
    assert {"segment_id": screen["segment_id"], "canonical_segment_id": user} in merged


async def test_status_shows_how_far_profiles_sync_has_loaded(
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(make_config(IDENTITY + warehouse.toml)) as server:
        await send(http, server, *JOURNEY, *MERGE)
        report = await server.warehouses.sync_now("wh")
        assert report.status == "success", report.error
    config = str(tmp_path / "cdpd.toml")
    capsys.readouterr()  # the daemon's logs
    status_json = ["warehouse", "status", "--json", "--config", config]
    assert await asyncio.to_thread(cli.main, status_json) == 0
    (status,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status["profiles_position"] == status["identity_last_change"] > 0
    assert "holder" not in status  # a JetStream node's only
    assert await asyncio.to_thread(cli.main, ["warehouse", "status", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"profiles  change {status['profiles_position']} (identity store last change" in out
    assert "; 0 to load)" in out
