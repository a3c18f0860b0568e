"""The source schema without a plan: observed at ingestion, shown by `cdpd schema`, turned
into a starter plan by `cdpd plans infer` that then finds no violations in the same traffic;
and blocked_events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.governance import plans
from tests.governance_plans import governed_config
from tests.helpers import basic_auth, query, stored_payloads

AUTH = {"Authorization": basic_auth("wk_test")}

TRAFFIC: list[dict[str, Any]] = [
    {"type": "track", "event": "Order Completed", "properties": {"order_id": "o1", "total": 3}},
    {
        "type": "track",
        "event": "Order Completed",
        "properties": {"order_id": "o2", "total": 9.5, "coupon": None},
    },
    {"type": "track", "event": "Signed Up", "properties": {"plan": "pro", "tags": ["a"]}},
    {"type": "identify", "traits": {"email": "a@example.com", "age": 30}},
    {"type": "identify", "traits": {"email": "b@example.com"}},
    {"type": "page", "name": "Home", "properties": {"path": "/"}},
    {"type": "screen", "name": "Settings"},
    {"type": "group", "groupId": "g1", "traits": {"name": "Initech"}},
    {"type": "alias", "previousId": "anon"},
]


async def send(tmp_path: Path, data_dir: Path, plan: Path | None, website: str = "") -> None:
    path = tmp_path / "cdpd.toml"
    path.write_text(governed_config(data_dir, plan, website))
    async with running(cdpd_config.load(path)) as server, aiohttp.ClientSession() as http:
        batch = [{**message, "userId": "u"} for message in TRAFFIC]
        async with http.post(
            f"{server.url}/v1/batch", json={"batch": batch}, headers=AUTH
        ) as response:
            assert response.status == 200


async def test_schema_infer_round_trip(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await send(tmp_path, data_dir, None)
    config = str(tmp_path / "cdpd.toml")
    seen = dict(
        ((event, field, value_type), count)
        for event, field, value_type, count in query(
            data_dir,
            "SELECT event, field, value_type, count FROM schema_fields WHERE type = 'track'",
        )
    )
    assert seen[("Order Completed", "", "")] == 2
    assert seen[("Order Completed", "properties.total", "integer")] == 1
    assert seen[("Order Completed", "properties.total", "number")] == 1
    assert seen[("Order Completed", "properties.coupon", "null")] == 1
    assert await asyncio.to_thread(cli.main, ["--config", config, "schema", "website"]) == 0
    assert "properties.order_id" in capsys.readouterr().out

    assert await asyncio.to_thread(cli.main, ["--config", config, "plans", "infer", "website"]) == 0
    captured = capsys.readouterr()
    inferred = json.loads(captured.out)  # only the plan on stdout
    by_key = {(r["type"], r.get("key")): r for r in inferred["rules"]}
    order = by_key[("TRACK", "Order Completed")]["jsonSchema"]["properties"]["properties"]
    assert order["required"] == ["order_id", "total"]  # coupon was absent from one event
    assert order["properties"]["total"] == {"type": "number"}
    assert order["properties"]["coupon"] == {"type": "null"}
    identify = by_key[("IDENTIFY", None)]["jsonSchema"]["properties"]["traits"]
    assert "required" not in identify
    assert set(by_key) == {
        ("TRACK", "Order Completed"),
        ("TRACK", "Signed Up"),
        ("IDENTIFY", None),
        ("GROUP", None),
        ("PAGE", "Home"),
        ("SCREEN", "Settings"),
    }

    plan_path = tmp_path / "inferred.json"
    plan_path.write_text(captured.out)
    plans.load("inferred", plan_path)  # loads unchanged
    strict = (
        "[sources.protocols.track]\nallowUnplannedEvents = false\n"
        "allowUnplannedEventProperties = false\nallowEventOnViolations = false\n"
    )
    data_again = tmp_path / "again"
    await send(tmp_path, data_again, plan_path, strict)
    assert query(data_again, "SELECT count(*) FROM violations") == [(0,)]
    assert query(data_again, "SELECT count(*) FROM blocked_messages") == [(0,)]
    stored = stored_payloads(data_again)
    assert len(stored) == len(TRAFFIC)
    assert all("protocols" not in message.get("context", {}) for message in stored)


async def test_blocked_events_without_a_plan(tmp_path: Path, data_dir: Path) -> None:
    await send(tmp_path, data_dir, None, 'blocked_events = ["Signed Up"]\n')
    events = [p.get("event") for p in stored_payloads(data_dir) if p["type"] == "track"]
    assert events == ["Order Completed", "Order Completed"]
    assert query(data_dir, "SELECT event, reason_code FROM blocked_messages") == [
        ("Signed Up", "blocked_event")
    ]
    # Still in the source schema: it was seen.
    assert query(
        data_dir, "SELECT count FROM schema_fields WHERE event = 'Signed Up' AND field = ''"
    ) == [(1,)]


def test_infer_on_an_unseen_source_fails(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cdpd.toml"
    path.write_text(governed_config(data_dir, None))
    assert cli.main(["--config", str(path), "plans", "infer", "website"]) == 1  # no outbox
    assert capsys.readouterr().out == ""
