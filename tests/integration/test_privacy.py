"""The privacy portal end to end on a real cdpd: fields found and suggested at ingestion (the
inbox), classified by CLI and admin API (the inventory), blocked at the source, hashed or
blocked per destination at a real webhook receiver and per warehouse in SQLite and PostgreSQL,
and `cdpd privacy scan`."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.warehouse import loader
from tests.helpers import WarehouseProbe, query, stored_payloads
from tests.integration.test_delivery import delivered, hook, send
from tests.sink import Sink

MakeConfig = Callable[..., cdpd_config.Config]
ADMIN = '[admin]\ntoken = "adm1n"\n'
BEARER = {"Authorization": "Bearer adm1n"}
CARD = "4111 1111 1111 1111"

MESSAGES: list[dict[str, Any]] = [
    {
        "type": "track",
        "event": "Order Completed",
        "userId": "u1",
        "messageId": "m1",
        "properties": {
            "order_id": "o1",
            "email": "jane@example.com",
            "payment": CARD,
            "address": {"street": "1 Main St", "city": "Springfield"},
        },
        "context": {"ip": "10.0.0.1", "library": {"name": "analytics-python"}},
    },
    {
        "type": "identify",
        "userId": "u1",
        "messageId": "m2",
        "traits": {"name": "Jane Doe", "plan": "pro", "phone": None},
    },
]


def cdpd_cli(tmp_path: Path, *args: str) -> int:
    return cli.main(["--config", str(tmp_path / "cdpd.toml"), *args])


def inbox_rows(data_dir: Path) -> dict[str, tuple[Any, ...]]:
    rows = query(
        data_dir,
        "SELECT field, source, suggested_class, matcher, matched_on, sample FROM privacy_inbox",
    )
    return {row[0]: row[1:] for row in rows}


async def test_fields_land_in_the_inbox_with_suggested_classes(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with running(make_config()) as server:
        await send(http, server, MESSAGES)
    found = inbox_rows(data_dir)  # written by the last flush at shutdown
    assert found["properties.email"] == ("website", "yellow", "email", "key", "j***@*******.**m")
    assert found["properties.payment"] == (
        "website",
        "red",
        "credit card",
        "value",
        "4*** **** **** ***1",
    )
    assert found["properties.address.street"][1:3] == ("yellow", "street")
    assert found["properties.address.city"][1] == "yellow"
    assert found["properties.order_id"][1] is None
    assert found["context.ip"][1:4] == ("yellow", "ip", "key")
    assert found["context.library.name"][1] is None  # names software, not a person
    assert found["traits.name"][1:3] == ("yellow", "name")
    assert found["traits.plan"][1] is None
    assert found["traits.phone"][1:] == ("yellow", "phone", "key", None)  # null: no sample
    first_last = query(
        data_dir,
        "SELECT first_seen, last_seen FROM privacy_inbox WHERE field = 'properties.email'",
    )
    assert first_last[0][0] <= first_last[0][1]


async def test_a_field_first_seen_empty_is_matched_on_its_first_value(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    first = {"type": "track", "event": "E", "userId": "u", "properties": {"contact": None}}
    later = {**first, "properties": {"contact": "jane@example.com"}}
    async with running(make_config()) as server:
        await send(http, server, [first])
        await send(http, server, [later])
    assert inbox_rows(data_dir)["properties.contact"][1:] == (
        "yellow",
        "email",
        "value",
        "j***@*******.**m",
    )


async def test_classify_round_trip_through_cli_and_admin(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(make_config(ADMIN)) as server:
        await send(http, server, MESSAGES)
    capsys.readouterr()
    assert await asyncio.to_thread(cdpd_cli, tmp_path, "privacy", "inbox", "--json") == 0
    inbox = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert inbox[0]["suggested_class"] == "red"  # strongest first
    assert "properties.email" in {f["field"] for f in inbox}

    assert (
        await asyncio.to_thread(
            cdpd_cli, tmp_path, "privacy", "classify", "properties.email", "yellow"
        )
        == 0
    )
    assert (
        await asyncio.to_thread(
            cdpd_cli, tmp_path, "privacy", "classify", "properties.payment", "red"
        )
        == 0
    )
    assert await asyncio.to_thread(cdpd_cli, tmp_path, "privacy", "classify", "email", "red") == 2
    assert "not a field path" in capsys.readouterr().err
    assert await asyncio.to_thread(cdpd_cli, tmp_path, "privacy", "inventory") == 0
    out = capsys.readouterr().out
    assert "properties.payment" in out
    assert out.index("properties.payment") < out.index("properties.email")  # red first
    assert await asyncio.to_thread(cdpd_cli, tmp_path, "privacy", "inbox") == 0
    assert "properties.email" not in capsys.readouterr().out  # classified: out of the inbox
    assert await asyncio.to_thread(cdpd_cli, tmp_path, "privacy", "inbox", "--all") == 0
    assert "[classified yellow]" in capsys.readouterr().out
    last_week = "2026-11-29T00:00:00Z"
    assert (
        await asyncio.to_thread(
            cdpd_cli, tmp_path, "privacy", "inbox", "--since", last_week, "--json"
        )
        == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == len(inbox) - 2  # two are classified
    assert (
        await asyncio.to_thread(
            cdpd_cli, tmp_path, "privacy", "inbox", "--since", "2999-01-01T00:00:00Z", "--json"
        )
        == 0
    )
    assert capsys.readouterr().out == ""

    async with running(make_config(ADMIN)) as server:
        base = f"{server.url}/admin/privacy"
        async with http.get(f"{base}/inventory") as resp:
            assert resp.status == 401
        async with http.get(f"{base}/inventory", headers=BEARER) as resp:
            fields = (await resp.json())["fields"]
        assert {(f["field"], f["class"], f["classified_by"]) for f in fields} == {
            ("properties.payment", "red", "cli"),
            ("properties.email", "yellow", "cli"),
        }
        body = {"field": "traits.name", "class": "green"}
        async with http.post(f"{base}/classify", json=body, headers=BEARER) as resp:
            assert resp.status == 200
        body = {"field": "properties.email", "class": None}
        async with http.post(f"{base}/classify", json=body, headers=BEARER) as resp:
            assert resp.status == 200
        for bad in ({"field": "nowhere", "class": "red"}, {"field": "traits.x", "class": "blue"}):
            async with http.post(f"{base}/classify", json=bad, headers=BEARER) as resp:
                assert resp.status == 400
                assert "message" in await resp.json()
        async with http.get(f"{base}/inbox?source=website", headers=BEARER) as resp:
            inbox_fields = {f["field"] for f in (await resp.json())["fields"]}
        async with http.get(f"{base}/inbox?since=2999-01-01T00:00:00Z", headers=BEARER) as resp:
            assert (await resp.json())["fields"] == []
        async with http.get(f"{base}/inbox?since=yesterday", headers=BEARER) as resp:
            assert resp.status == 400
        assert "properties.email" in inbox_fields  # taken out of the inventory: back in
        assert "traits.name" not in inbox_fields
    assert sorted(query(data_dir, "SELECT field, class, classified_by FROM privacy_inventory")) == [
        ("properties.payment", "red", "cli"),
        ("traits.name", "green", "admin api"),
    ]


async def test_a_source_blocks_the_red_fields_of_its_inventory(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path, tmp_path: Path
) -> None:
    config = make_config(ADMIN + '[privacy.sources.website]\nblock = ["red"]\n')
    async with running(config) as server:
        await send(http, server, [MESSAGES[0]])  # nothing classified yet: all of it is kept
        body = {"field": "properties.payment", "class": "red"}
        async with http.post(
            f"{server.url}/admin/privacy/classify", json=body, headers=BEARER
        ) as resp:
            assert resp.status == 200
        await send(http, server, [{**MESSAGES[0], "messageId": "m1b"}])  # blocked at once
        await asyncio.to_thread(
            cdpd_cli, tmp_path, "privacy", "classify", "properties.address", "red"
        )
        await _until(
            lambda: (
                server.ingest.governance.privacy.inventory.classes.get("properties.address")
                == "red"
            )
        )  # the daemon reads what the CLI wrote
        await send(http, server, [{**MESSAGES[0], "messageId": "m1c"}])
        await send(http, server, [{**MESSAGES[0], "messageId": "m1d"}], key="wk_other")
        async with http.get(f"{server.url}/metrics") as resp:
            metrics = await resp.text()
    assert 'cdpd_privacy_fields_removed_total{source="website"} 2.0' in metrics
    assert 'cdpd_privacy_inventory_fields{class="red"} 2.0' in metrics
    assert 'cdpd_privacy_fields_seen{source="backend"}' in metrics
    stored = {p["messageId"]: p["properties"] for p in stored_payloads(data_dir)}
    assert stored["m1"]["payment"] == CARD
    assert "payment" not in stored["m1b"]
    assert stored["m1b"]["address"]["city"] == "Springfield"
    assert set(stored["m1c"]) == {"order_id", "email"}  # the event flows on without them
    assert stored["m1d"]["payment"] == CARD  # another source without the control


async def _until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    """Poll: the change comes from another process's write, read on the daemon's next pass."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.05)


def sha256(text: str, salt: str = "") -> str:
    return hashlib.sha256((salt + text).encode()).hexdigest()


async def classify(http: aiohttp.ClientSession, url: str, field: str, class_: str) -> None:
    body = {"field": field, "class": class_}
    async with http.post(f"{url}/admin/privacy/classify", json=body, headers=BEARER) as resp:
        assert resp.status == 200


async def test_one_message_reaches_a_webhook_hashed_and_the_warehouse_intact(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
) -> None:
    async with Sink() as sink, Sink() as plain:
        config = make_config(
            ADMIN
            + hook("marketing", sink.url)
            + hook("plain", plain.url)
            + warehouse.toml
            + '[privacy]\nsalt = "pepper"\n'
            + '[privacy.destinations.marketing]\nyellow = "hash"\nred = "block"\n'
        )
        async with running(config) as server:
            await classify(http, server.url, "properties.email", "yellow")
            await classify(http, server.url, "properties.payment", "red")
            await classify(http, server.url, "context.ip", "yellow")
            await classify(http, server.url, "properties.order_id", "green")
            await send(http, server, [MESSAGES[0]])
            await delivered(server.delivery.lanes["marketing"], 1)
            await delivered(server.delivery.lanes["plain"], 1)
            report = await server.warehouses.sync_now("wh")
            assert report.status == "success", report.error
    (got,) = sink.messages
    assert got["properties"]["email"] == sha256("jane@example.com", "pepper")
    assert "payment" not in got["properties"]
    assert got["properties"]["order_id"] == "o1"  # green: allowed
    assert got["context"]["ip"] == sha256("10.0.0.1", "pepper")
    assert got["context"]["library"] == {"name": "analytics-python"}
    (untouched,) = plain.messages
    assert untouched["properties"]["email"] == "jane@example.com"
    assert untouched["properties"]["payment"] == CARD
    rows = await warehouse.rows("website", "order_completed", "id, email, payment, context_ip")
    assert rows == [
        {"id": "m1", "email": "jane@example.com", "payment": CARD, "context_ip": "10.0.0.1"}
    ]


async def test_a_warehouse_gets_hashed_and_blocked_fields(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    warehouse: WarehouseProbe,
) -> None:
    config = make_config(
        ADMIN + warehouse.toml + '[privacy.warehouses.wh]\nyellow = "hash"\nred = "block"\n'
    )
    async with running(config) as server:
        await classify(http, server.url, "properties.email", "yellow")
        await classify(http, server.url, "traits.name", "yellow")
        await classify(http, server.url, "properties.payment", "red")
        await send(http, server, MESSAGES)
        report = await server.warehouses.sync_now("wh")
        assert report.status == "success", report.error
    (row,) = await warehouse.rows("website", "order_completed", "id, email, order_id")
    assert row == {"id": "m1", "email": sha256("jane@example.com"), "order_id": "o1"}
    assert "payment" not in await warehouse.columns("website", "order_completed")
    assert await warehouse.rows("website", "users", "id, name, plan") == [
        {"id": "u1", "name": sha256("Jane Doe"), "plan": "pro"}
    ]
    (identify,) = await warehouse.rows("website", "identifies", "id, name")
    assert identify == {"id": "m2", "name": sha256("Jane Doe")}


async def test_scan_reports_messages_with_red_or_unclassified_fields(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(make_config()) as server:
        await send(http, server, MESSAGES)
    for field, class_ in (
        ("properties.payment", "red"),
        ("properties.order_id", "green"),
        ("properties.email", "yellow"),
        ("properties.address", "yellow"),  # a parent classifies its fields
        ("context", "green"),
        ("traits", "green"),
    ):
        assert await asyncio.to_thread(
            cdpd_cli, tmp_path, "privacy", "classify", field, class_
        ) in (0, 2)
    capsys.readouterr()
    assert await asyncio.to_thread(cdpd_cli, tmp_path, "privacy", "scan", "--json") == 0
    captured = capsys.readouterr()
    hits = [json.loads(line) for line in captured.out.splitlines()]
    assert [(h["message_id"], h["red"], h["unclassified"]) for h in hits] == [
        ("m1", ["properties.payment"], ["context.ip", "context.library.name"]),
        ("m2", [], ["traits.name", "traits.phone", "traits.plan"]),
    ]
    assert "2 messages hold red or unclassified fields: 1 red, 2 unclassified" in captured.err
    assert (
        await asyncio.to_thread(
            cdpd_cli, tmp_path, "privacy", "scan", "--since", "2999-01-01T00:00:00Z"
        )
        == 0
    )
    assert capsys.readouterr().out == ""
    assert await asyncio.to_thread(cdpd_cli, tmp_path, "privacy", "scan", "--since", "x") == 2


async def test_controls_apply_when_delivered_so_a_replay_follows_the_inventory(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    """A field classified after the message was stored is hashed in a replay's copy, after
    the destination's own transformation moved it."""
    transformation = (
        '[[transformations]]\nname = "move"\nsource = "website"\ndestination = "marketing"\n'
        "if = 'event = \"Order Completed\"'\n"
        'propertyRenames = [{oldName = "email", newName = "contact_email"}]\n'
    )
    async with Sink() as sink:
        config = make_config(
            ADMIN
            + hook("marketing", sink.url)
            + transformation
            + '[privacy.destinations.marketing]\nred = "hash"\n'
        )
        async with running(config) as server:
            lane = server.delivery.lanes["marketing"]
            await send(http, server, [MESSAGES[0]])
            await delivered(lane, 1)
            await classify(http, server.url, "properties.contact_email", "red")
            replay = {"destination": "marketing", "since": "2000-01-01T00:00:00Z"}
            async with http.post(f"{server.url}/admin/replay", json=replay, headers=BEARER) as resp:
                assert (await resp.json())["queued"] == 1
            await delivered(lane, 2)
    first, again = sink.messages
    assert first["properties"]["contact_email"] == "jane@example.com"
    assert again["properties"]["contact_email"] == sha256("jane@example.com")
    assert "email" not in again["properties"]


async def test_warehouse_controls_reach_a_syncs_worker_process(
    make_config: MakeConfig, http: aiohttp.ClientSession, warehouse: WarehouseProbe
) -> None:
    async with running(make_config(ADMIN)) as server:  # no warehouse: the sync below loads
        await classify(http, server.url, "properties.email", "yellow")
        messages = [{**MESSAGES[0], "messageId": f"m{n:02}"} for n in range(20)]
        await send(http, server, messages)
    config = make_config(warehouse.toml + '[privacy.warehouses.wh]\nyellow = "hash"\n')
    (wh,) = config.warehouses
    report = await loader.sync(config, wh, batch_messages=5, worker=True)  # `cdpd warehouse sync`
    assert (report.status, report.messages) == ("success", 20)
    emails = await warehouse.fetch(
        f"SELECT DISTINCT email FROM {warehouse.name('website', 'order_completed')}"
    )
    assert emails == [(sha256("jane@example.com"),)]
