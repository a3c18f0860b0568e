"""Protocols over real HTTP: the verdict in the stored message, the violations and
blocked_messages tables, forwarding, and `cdpd plans check`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.governance.retention import GovernancePruner
from tests.governance_plans import governed_config, write_plan
from tests.helpers import FakeClock, basic_auth, query, stored_payloads

AUTH = {"Authorization": basic_auth("wk_test")}
Start = Callable[..., Any]


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    return write_plan(tmp_path / "plan.json")


@pytest.fixture
def start(tmp_path: Path, data_dir: Path, plan_path: Path) -> Start:
    @asynccontextmanager
    async def start(website: str = "", extra: str = "") -> AsyncIterator[Running]:
        path = tmp_path / "cdpd.toml"
        path.write_text(governed_config(data_dir, plan_path, website, extra))
        async with running(cdpd_config.load(path)) as server:
            yield server

    return start


async def post(http: aiohttp.ClientSession, server: Running, path: str, body: object) -> None:
    async with http.post(f"{server.url}{path}", json=body, headers=AUTH) as response:
        assert response.status == 200
        assert await response.json() == {"success": True}


async def test_the_verdict_is_stored_in_the_message_and_the_violations_table(
    start: Start, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with start() as server:
        await post(
            http,
            server,
            "/v1/track",
            {"userId": "u", "event": "Order Completed", "properties": {"revenue": "12"}},
        )
        await post(
            http,
            server,
            "/v1/track",
            {"userId": "u", "event": "Order Completed", "properties": {"order_id": "o"}},
        )
    bad, clean = stored_payloads(data_dir)
    assert bad["context"]["protocols"]["violations"] == [
        {
            "type": "Required",
            "field": "properties.order_id",
            "description": "properties.order_id is required",
        },
        {
            "type": "Invalid Type",
            "field": "properties.revenue",
            "description": "Invalid type. Expected: number, given: string",
        },
    ]
    assert "protocols" not in clean.get("context", {})
    rows = query(
        data_dir,
        "SELECT source, tracking_plan, message_id, type, event, violation_type, field, blocked"
        " FROM violations ORDER BY id",
    )
    assert rows == [
        ("website", "main", bad["messageId"], "track", "Order Completed", "Required",
         "properties.order_id", 0),
        ("website", "main", bad["messageId"], "track", "Order Completed", "Invalid Type",
         "properties.revenue", 0),
    ]  # fmt: skip


async def test_a_blocked_message_gets_200_and_is_kept_apart(
    start: Start, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    settings = "[sources.protocols.track]\nallowUnplannedEvents = false\n"
    async with start(settings) as server:
        await post(
            http,
            server,
            "/v1/batch",
            {
                "batch": [
                    {"type": "track", "userId": "u", "event": "Spam", "messageId": "m-spam"},
                    {"type": "track", "userId": "u", "event": "Signed Up", "messageId": "m-ok"},
                ]
            },
        )
        assert server.ingest.accepted == 1
        assert server.ingest.governance.blocked == {"website": 1}
    assert [p["messageId"] for p in stored_payloads(data_dir)] == ["m-ok"]
    ((message_id, reason_code, payload),) = query(
        data_dir, "SELECT message_id, reason_code, payload FROM blocked_messages"
    )
    assert (message_id, reason_code) == ("m-spam", "unplanned_event")
    assert '"Unplanned Event"' in payload
    assert query(data_dir, "SELECT blocked FROM violations") == [(1,)]


async def test_inline_tables_and_sub_tables_are_the_same(
    start: Start, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    settings = "protocols = { track = { allowUnplannedEventProperties = false } }\n"
    async with start(settings) as server:
        await post(
            http,
            server,
            "/v1/track",
            {"userId": "u", "event": "Signed Up", "properties": {"x": 1}},
        )
    (stored,) = stored_payloads(data_dir)
    assert stored["properties"] == {}
    assert stored["context"]["protocols"]["omitted"] == ["x"]


async def test_forwarded_violations_arrive_in_the_named_source(
    start: Start, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    settings = '[sources.protocols]\nforwardingViolationsTo = "violations"\n'
    async with start(settings) as server:
        await post(
            http, server, "/v1/track", {"userId": "u", "event": "Order Completed", "properties": {}}
        )
    rows = query(data_dir, "SELECT source, event, user_id FROM messages ORDER BY seq")
    assert rows == [
        ("website", "Order Completed", "u"),
        ("violations", "Violation Generated", "schema-violations"),
    ]


def test_plans_check(
    tmp_path: Path, data_dir: Path, plan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cdpd.toml"
    path.write_text(governed_config(data_dir, plan_path))
    assert cli.main(["--config", str(path), "plans", "check"]) == 0
    assert "main: ok (4 rules, 2 track events; sources: website)" in capsys.readouterr().out
    plan_path.write_text('{"rules": [{"type": "TRACK", "key": "A", "jsonSchema": {"type": 1}}]}')
    assert cli.main(["--config", str(path), "plans", "check"]) == 2
    error = capsys.readouterr().err
    assert "tracking plan 'main'" in error
    assert "rules[0] (TRACK 'A'): jsonSchema is not a valid JSON Schema" in error
    assert cli.main(["--config", str(path), "check-config"]) == 2


async def test_a_plan_that_does_not_load_stops_the_start(tmp_path: Path, data_dir: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"rules": [{"type": "TRACK"}]}')
    path = tmp_path / "cdpd.toml"
    path.write_text(governed_config(data_dir, plan))
    with pytest.raises(cdpd_config.ConfigError, match="a TRACK rule needs a `key`"):
        async with running(cdpd_config.load(path)):
            pass


async def test_violations_are_listed_by_the_cli_the_admin_endpoint_and_metrics(
    start: Start,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = "[sources.protocols.track]\nallowEventOnViolations = false\n"
    async with start(settings, '[admin]\ntoken = "t"\n') as server:
        for n in range(3):
            body = {"userId": "u", "event": "Order Completed", "messageId": f"m-{n}"}
            await post(http, server, "/v1/track", {**body, "properties": {"order_id": n}})
        await post(http, server, "/v1/track", {"userId": "u", "event": "Signed Up"})
        admin = {"Authorization": "Bearer t"}
        async with http.get(
            f"{server.url}/admin/violations?source=website", headers=admin
        ) as response:
            assert response.status == 200
            (entry,) = (await response.json())["violations"]
        async with http.get(f"{server.url}/metrics") as response:
            metrics = await response.text()
        assert server.ingest.accepted == 1
    assert entry["event"] == "Order Completed"
    assert entry["field"] == "properties.order_id"
    assert entry["count"] == 3
    assert entry["sample_message_id"] in {"m-0", "m-1", "m-2"}
    assert entry["first_seen"] <= entry["last_seen"]
    assert 'cdpd_protocols_violations_total{source="website"} 3.0' in metrics
    assert 'cdpd_protocols_blocked_total{source="website"} 3.0' in metrics
    assert 'cdpd_ingest_messages_total{outcome="accepted"} 1.0' in metrics
    config_path = str(tmp_path / "cdpd.toml")
    assert (
        await asyncio.to_thread(
            cli.main, ["--config", config_path, "violations", "--event", "Order Completed"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "properties.order_id" in out
    assert "Invalid type. Expected: string, given: integer" in out
    assert (
        await asyncio.to_thread(
            cli.main, ["--config", config_path, "violations", "--since", "2999-01-01"]
        )
        == 0
    )
    assert capsys.readouterr().out == ""
    assert (
        await asyncio.to_thread(
            cli.main, ["--config", config_path, "violations", "--since", "soon"]
        )
        == 2
    )


async def test_the_settings_document_publishes_plan_track(
    start: Start, http: aiohttp.ClientSession
) -> None:
    settings = (
        'blocked_events = ["Spam"]\n[sources.protocols.track]\nallowUnplannedEvents = false\n'
    )
    async with start(settings) as server:
        async with http.get(f"{server.url}/v1/projects/wk_test/settings") as response:
            track = (await response.json())["plan"]["track"]
        async with http.get(f"{server.url}/v1/projects/wk_violations/settings") as response:
            default = (await response.json())["plan"]["track"]
    assert track == {
        "__default": {"enabled": False, "integrations": {}},
        "Order Completed": {"enabled": True, "integrations": {}},
        "Signed Up": {"enabled": True, "integrations": {}},
        "Spam": {"enabled": False, "integrations": {}},
    }
    assert default == {"__default": {"enabled": True, "integrations": {}}}


async def test_blocked_messages_and_violations_are_kept_30_days(
    tmp_path: Path, data_dir: Path, plan_path: Path, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "cdpd.toml"
    settings = "[sources.protocols.track]\nallowUnplannedEvents = false\n"
    path.write_text(governed_config(data_dir, plan_path, settings))
    clock = FakeClock()
    async with running(cdpd_config.load(path), clock=clock) as server:
        await post(http, server, "/v1/track", {"userId": "u", "event": "Spam"})
        assert query(data_dir, "SELECT count(*) FROM blocked_messages") == [(1,)]
        pruner = GovernancePruner(server.writer, clock)
        clock.advance(29 * 24 * 3600)
        await pruner.prune_once()
        assert query(data_dir, "SELECT count(*) FROM blocked_messages") == [(1,)]
        assert query(data_dir, "SELECT count(*) FROM violations") == [(1,)]
        clock.advance(2 * 24 * 3600)
        await pruner.prune_once()  # (the daemon's own pass may have been first)
        assert query(data_dir, "SELECT count(*) FROM blocked_messages") == [(0,)]
        assert query(data_dir, "SELECT count(*) FROM violations") == [(0,)]


async def test_source_transformations_change_what_is_stored(
    start: Start, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    extra = (
        '[[transformations]]\nname = "legacy names"\nsource = "website"\n'
        'if = \'event = "order_completed"\'\nnewEventName = "Order Completed"\n'
        'propertyRenames = [{ oldName = "id", newName = "order_id" }]\n'
    )
    async with start(extra=extra) as server:
        await post(
            http,
            server,
            "/v1/track",
            {"userId": "u", "event": "order_completed", "properties": {"id": "o1"}},
        )
    (stored,) = stored_payloads(data_dir)
    assert stored["event"] == "Order Completed"
    assert stored["properties"] == {"order_id": "o1"}
    assert query(data_dir, "SELECT event FROM messages") == [("Order Completed",)]
    # Protocols checked the message as it was sent (before the transformation).
    assert stored["context"]["protocols"]["violations"][0]["description"] == (
        "Event order_completed is not planned"
    )


async def test_a_retried_message_is_recorded_once(
    start: Start, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    settings = "[sources.protocols.track]\nallowUnplannedEvents = false\n"
    body = {"userId": "u", "event": "Order Completed", "messageId": "m-1", "properties": {}}
    blocked = {"userId": "u", "event": "Spam", "messageId": "m-2"}
    async with start(settings) as server:
        for _ in range(2):
            await post(http, server, "/v1/track", body)
            await post(http, server, "/v1/track", blocked)
    assert query(data_dir, "SELECT count(*) FROM messages") == [(1,)]
    assert query(data_dir, "SELECT message_id, count(*) FROM violations GROUP BY 1") == [
        ("m-1", 1),
        ("m-2", 1),
    ]
    assert query(data_dir, "SELECT count(*) FROM blocked_messages") == [(1,)]
