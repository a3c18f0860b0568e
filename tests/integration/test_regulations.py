"""Regulations end to end: a real cdpd, its admin API, its outbox and a real SQLite or
PostgreSQL warehouse; each regulation type, and the proof that a deleted user is gone."""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import running
from tests.governance_plans import governed_config, write_plan
from tests.helpers import WRITE_KEY, WarehouseProbe, basic_auth, query
from tests.integration.test_delivery import hook, recorded, send
from tests.regulations import (
    ADMIN,
    AUTH,
    BAD_REQUESTS,
    ENDPOINTS,
    outbox_mentions,
    refused,
    regulate,
    regulation,
    settled,
    warehouse_mentions,
)
from tests.sink import Sink, status

MakeConfig = Callable[..., cdpd_config.Config]
GONE = "user-gone-7f3a"
KEPT = "user-kept-2b9c"
S = "website"  # the warehouse schema of the source "website"
SHOP = '[[sources]]\nname = "shop"\nwrite_key = "wk_shop"\nblocked_events = ["Banned"]\n'


def track(message_id: str, user: str, event: str = "Order Completed") -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "userId": user, "event": event}


def identify(message_id: str, user: str) -> dict[str, Any]:
    return {"type": "identify", "messageId": message_id, "userId": user, "traits": {"plan": "pro"}}


def everything_of(user: str, tag: str) -> list[dict[str, Any]]:
    """A track, an identify and a message rejected as invalid (no event name)."""
    return [
        track(f"{tag}-t-{user}", user),
        identify(f"{tag}-i-{user}", user),
        {"type": "track", "messageId": f"{tag}-bad-{user}", "userId": user},
    ]


async def test_the_endpoints_need_the_admin_token(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with running(make_config(ADMIN)) as server:
        for method, path in ENDPOINTS:
            async with http.request(method, f"{server.url}{path}", json={}) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("body", "says"), BAD_REQUESTS)
async def test_bad_requests_say_what_is_wrong(
    make_config: MakeConfig, http: aiohttp.ClientSession, body: dict[str, Any], says: str
) -> None:
    async with running(make_config(ADMIN)) as server:
        await refused(http, server, body, says)


async def test_suppression_answers_counts_and_stores_nothing(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with running(make_config(ADMIN + SHOP)) as server:
        regulation_id = await regulate(http, server, "SUPPRESS_ONLY", GONE)
        found = await regulation(http, server, regulation_id)
        assert found["overallStatus"] == "FINISHED"
        assert found["regulationType"] == "SUPPRESS_ONLY"
        assert found["targets"] == []
        await send(http, server, everything_of(GONE, "a") + everything_of(KEPT, "a"))
        await send(http, server, [track("a-blocked", GONE, "Banned")], key="wk_shop")
        async with http.post(
            f"{server.url}/v1/track",
            json=track("a-single", GONE),
            headers={"Authorization": basic_auth(WRITE_KEY)},
        ) as response:
            assert response.status == 200
            assert await response.json() == {"success": True}
        assert server.ingest.governance.suppressions.suppressed == {"website": 4, "shop": 1}
        async with http.get(f"{server.url}/metrics") as response:
            assert 'cdpd_privacy_suppressed_total{source="website"} 4.0' in await response.text()
        async with http.get(f"{server.url}/suppressions", headers=AUTH) as response:
            listed = (await response.json())["data"]["suppressions"]
        assert [(s["userId"], s["sourceId"], s["regulateId"]) for s in listed] == [
            (GONE, None, regulation_id)
        ]
    assert outbox_mentions(data_dir, GONE) == {}
    assert outbox_mentions(data_dir, KEPT) == {"messages": 2, "rejects": 1}


async def test_unsuppress_lifts_it_and_the_source_scope_holds(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with running(make_config(ADMIN + SHOP)) as server:
        await regulate(http, server, "SUPPRESS_ONLY", GONE, source="shop")
        await send(http, server, [track("b-1", GONE)])  # website: not suppressed
        await send(http, server, [track("b-2", GONE)], key="wk_shop")
        # A source's UNSUPPRESS does not lift the workspace's suppression.
        await regulate(http, server, "SUPPRESS_ONLY", GONE)
        await regulate(http, server, "UNSUPPRESS", GONE, source="website")
        await send(http, server, [track("b-3", GONE)])
        await regulate(http, server, "UNSUPPRESS", GONE)
        await send(http, server, [track("b-4", GONE)], key="wk_shop")
        async with http.get(f"{server.url}/suppressions", headers=AUTH) as response:
            assert (await response.json())["data"]["suppressions"] == []
    stored = query(data_dir, "SELECT message_id FROM messages ORDER BY seq")
    assert stored == [("b-1",), ("b-4",)]


async def test_suppressions_survive_a_restart(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    config = make_config(ADMIN)
    async with running(config) as server:
        await regulate(http, server, "SUPPRESS_ONLY", GONE)
    async with running(config) as server:
        await send(http, server, [track("c-1", GONE), track("c-2", KEPT)])
    assert query(data_dir, "SELECT message_id FROM messages") == [("c-2",)]


async def test_suppress_with_delete_leaves_nothing_of_the_user(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    warehouse: WarehouseProbe,
) -> None:
    async with Sink() as sink:
        sink.by_message[f"d-t-{GONE}"] = deque([status(500)] * 50)
        config = make_config(ADMIN + SHOP + warehouse.toml + hook("hook", sink.url))
        async with running(config) as server:
            await send(http, server, everything_of(GONE, "d") + everything_of(KEPT, "d"))
            await send(http, server, [track("d-blocked", GONE, "Banned")], key="wk_shop")
            await server.warehouses.sync_now("wh")
            assert await warehouse_mentions(warehouse, GONE)
            (lane,) = server.delivery.lanes.values()
            await recorded(lane, 4)  # the user's track failed: a retrying ledger row
            assert outbox_mentions(data_dir, GONE).keys() >= {
                "messages",
                "rejects",
                "blocked_messages",
                "deliveries",
                "attempts",
            }

            regulation_id = await regulate(http, server, "SUPPRESS_WITH_DELETE", GONE)
            await send(http, server, everything_of(GONE, "e"))  # suppressed: never stored
            found = await settled(http, server, regulation_id)
            await server.warehouses.sync_now("wh")  # a later sync brings nothing back

        assert found["overallStatus"] == "FINISHED", found
        targets = {t["target"]: t for t in found["targets"]}
        assert set(targets) == {"outbox", "warehouse:wh", "destination:hook"}
        assert all(t["status"] == "FINISHED" for t in targets.values())
        assert targets["outbox"]["rowsRemoved"] >= 4
        assert targets["warehouse:wh"]["rowsRemoved"] >= 3  # tracks, its event table, users...
        assert targets["destination:hook"]["rowsRemoved"] == 1
        deletes = [m for m in sink.messages if m.get("type") == "delete"]
        assert [m["userId"] for m in deletes] == [GONE]
        assert outbox_mentions(data_dir, GONE) == {}
        assert await warehouse_mentions(warehouse, GONE) == {}
        assert await warehouse_mentions(warehouse, KEPT)
        assert outbox_mentions(data_dir, KEPT)


@pytest.mark.parametrize(
    ("kind", "targets", "stored"),
    [
        ("SUPPRESS_ONLY", set(), {"f-1", "f-2"}),
        ("UNSUPPRESS", set(), {"f-1", "f-2", "f-3"}),
        ("SUPPRESS_WITH_DELETE_INTERNAL", {"outbox", "warehouse:wh"}, {"f-2"}),
        ("DELETE_INTERNAL", {"outbox", "warehouse:wh"}, {"f-2", "f-3"}),
        ("DELETE_ONLY", {"outbox", "warehouse:wh", "destination:hook"}, {"f-2", "f-3"}),
        ("DELETE_ARCHIVE_ONLY", {"outbox"}, {"f-2", "f-3"}),
    ],
)
async def test_each_type_does_what_it_says(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    warehouse: WarehouseProbe,
    kind: str,
    targets: set[str],
    stored: set[str],
) -> None:
    async with Sink() as sink:
        config = make_config(ADMIN + warehouse.toml + hook("hook", sink.url))
        async with running(config) as server:
            await send(http, server, [track("f-1", GONE), track("f-2", KEPT)])
            await server.warehouses.sync_now("wh")
            regulation_id = await regulate(http, server, kind, GONE)
            found = await settled(http, server, regulation_id)
            await send(http, server, [track("f-3", GONE)])
            await server.warehouses.sync_now("wh")
    assert found["overallStatus"] == "FINISHED", found
    assert {t["target"] for t in found["targets"]} == targets
    in_outbox = {row[0] for row in query(data_dir, "SELECT message_id FROM messages")}
    assert in_outbox == stored
    loaded = {
        row[0] for row in await warehouse.fetch(f"SELECT id FROM {warehouse.name(S, 'tracks')}")
    }
    # The archive-only deletion leaves the warehouse as it was.
    assert loaded == (stored | {"f-1"} if kind == "DELETE_ARCHIVE_ONLY" else stored)
    forwarded = [m for m in sink.messages if m.get("type") == "delete"]
    assert [m["userId"] for m in forwarded] == ([GONE] if "destination:hook" in targets else [])


async def test_the_cli_creates_lists_and_shows(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    tmp_path: Path,
    warehouse: WarehouseProbe,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path = str(tmp_path / "cdpd.toml")
    async with running(make_config(ADMIN + warehouse.toml)) as server:
        await send(http, server, [track("h-1", GONE), track("h-2", KEPT)])
        await server.warehouses.sync_now("wh")
        args = ["regulations", "create", "SUPPRESS_WITH_DELETE", GONE, "--config", config_path]
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, args) == 0
        # The daemon's log shares standard output here: the id is its last 24 hex digits.
        regulation_id = re.findall("[0-9a-f]{24}", capsys.readouterr().out)[-1]
        found = await settled(http, server, regulation_id)
        await send(http, server, [track("h-3", GONE)])  # taken up: suppressed
    assert found["overallStatus"] == "FINISHED", found
    assert query(data_dir, "SELECT message_id FROM messages") == [("h-2",)]
    assert await warehouse_mentions(warehouse, GONE) == {}

    assert (
        await asyncio.to_thread(
            cli.main, ["regulations", "show", regulation_id, "--config", config_path]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert "status      FINISHED" in shown
    assert re.search(r"outbox\s+FINISHED\s+1\s+1", shown), shown
    assert re.search(r"warehouse:wh\s+FINISHED\s+[1-9]", shown), shown
    assert (
        await asyncio.to_thread(
            cli.main, ["regulations", "list", "--json", "--config", config_path]
        )
        == 0
    )
    (listed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (listed["id"], listed["overallStatus"], listed["subjectCount"]) == (
        regulation_id,
        "FINISHED",
        1,
    )
    assert (
        await asyncio.to_thread(cli.main, ["regulations", "show", "nope", "--config", config_path])
        == 1
    )
    verify = ["regulations", "verify", regulation_id, "--config", config_path]
    assert await asyncio.to_thread(cli.main, verify) == 0
    assert "none of the regulation's users is held anywhere (2 stores searched)" in (
        capsys.readouterr().out
    )
    # A suppression alone deletes nothing: verify finds what is held of the kept user.
    async with running(make_config(ADMIN + warehouse.toml)) as server:
        kept_regulation = await regulate(http, server, "SUPPRESS_ONLY", KEPT)
    capsys.readouterr()
    verify = ["regulations", "verify", kept_regulation, "--config", config_path]
    assert await asyncio.to_thread(cli.main, verify) == 1
    held = capsys.readouterr().out
    assert "outbox messages: 1 rows" in held
    assert "warehouse wh" in held
    assert (
        await asyncio.to_thread(
            cli.main, ["regulations", "create", "SUPPRESS_ONLY", "--config", config_path]
        )
        == 2
    )
    assert "subjectIds" in capsys.readouterr().err


async def test_violations_of_the_users_messages_go_with_them(
    http: aiohttp.ClientSession, data_dir: Path, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plan.json")
    path = tmp_path / "cdpd.toml"
    path.write_text(governed_config(data_dir, plan, extra=ADMIN))
    async with running(cdpd_config.load(path)) as server:
        bad = [
            {**track(f"v-{user}", user), "properties": {"revenue": "lots"}} for user in (GONE, KEPT)
        ]
        await send(http, server, bad)
        assert {row[0] for row in query(data_dir, "SELECT message_id FROM violations")} == {
            f"v-{GONE}",
            f"v-{KEPT}",
        }
        regulation_id = await regulate(http, server, "DELETE_INTERNAL", GONE)
        found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "FINISHED"
    assert outbox_mentions(data_dir, GONE) == {}
    assert {row[0] for row in query(data_dir, "SELECT message_id FROM violations")} == {f"v-{KEPT}"}


async def test_a_source_scoped_deletion_keeps_the_other_sources(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    warehouse: WarehouseProbe,
) -> None:
    async with running(make_config(ADMIN + SHOP + warehouse.toml)) as server:
        await send(http, server, [track("s-1", GONE)])
        await send(http, server, [track("s-2", GONE)], key="wk_shop")
        await server.warehouses.sync_now("wh")
        regulation_id = await regulate(http, server, "DELETE_INTERNAL", GONE, source="shop")
        found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "FINISHED", found
    assert found["sourceId"] == "shop"
    assert query(data_dir, "SELECT message_id FROM messages") == [("s-1",)]
    assert set(await warehouse_mentions(warehouse, GONE)) == (
        {"website__tracks", "website__order_completed"}
        if warehouse.kind == "sqlite"
        else {"website.tracks", "website.order_completed"}
    )


async def test_five_thousand_hostile_ids_in_one_request(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    hostile = ["'; DROP TABLE messages; --", 'a"b', "ü\u0000x", "%s", "*", "x" * 120]
    users = hostile + [f"{'y' * 100}-{n}" for n in range(5000 - len(hostile))]
    async with running(make_config(ADMIN)) as server:
        await send(http, server, [track(f"x-{n}", user) for n, user in enumerate(hostile)])
        regulation_id = await regulate(http, server, "SUPPRESS_WITH_DELETE_INTERNAL", *users)
        found = await settled(http, server, regulation_id)
        await send(http, server, [track("x-after", "*"), track("x-kept", KEPT)])
        async with http.get(
            f"{server.url}/suppressions?pagination.count=200", headers=AUTH
        ) as response:
            page = (await response.json())["data"]
    assert found["overallStatus"] == "FINISHED"
    assert found["subjectCount"] == 5000
    assert {t["target"]: t["rowsRemoved"] for t in found["targets"]} == {"outbox": len(hostile)}
    assert query(data_dir, "SELECT message_id FROM messages") == [("x-kept",)]
    assert len(page["suppressions"]) == 200
    assert page["pagination"]["next"] is not None


async def test_listing_filters_and_pages(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with running(make_config(ADMIN + SHOP)) as server:
        made = [await regulate(http, server, "SUPPRESS_ONLY", f"u{n}") for n in range(3)]
        made.append(await regulate(http, server, "SUPPRESS_ONLY", "u9", source="shop"))

        async def listed(query: str) -> Any:
            async with http.get(f"{server.url}/regulations{query}", headers=AUTH) as response:
                assert response.status == 200, await response.text()
                return (await response.json())["data"]

        first = await listed("?pagination.count=2")
        assert [r["id"] for r in first["regulations"]] == made[::-1][:2]
        cursor = first["pagination"]["next"]
        rest = await listed(f"?pagination.count=2&pagination.cursor={cursor}")
        assert [r["id"] for r in rest["regulations"]] == made[::-1][2:]
        assert [r["id"] for r in (await listed("/sources/shop"))["regulations"]] == [made[3]]
        assert [r["id"] for r in (await listed("?sourceId=shop"))["regulations"]] == [made[3]]
        assert len((await listed("?status=FINISHED"))["regulations"]) == 4
        assert (await listed("?status=RUNNING"))["regulations"] == []
        for bad in ("?status=DONE", "?pagination.count=0", "?pagination.count=x"):
            async with http.get(f"{server.url}/regulations{bad}", headers=AUTH) as response:
                assert response.status == 400


async def test_a_target_no_longer_configured_fails_with_the_reason(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    warehouse: WarehouseProbe,
) -> None:
    config_path = str(tmp_path / "cdpd.toml")
    make_config(ADMIN + warehouse.toml)  # the config the regulation is planned with
    args = ["regulations", "create", "DELETE_INTERNAL", GONE, "--config", config_path]
    assert await asyncio.to_thread(cli.main, args) == 0
    (regulation_id,) = [row[0] for row in query(tmp_path / "var", "SELECT id FROM regulations")]
    async with running(make_config(ADMIN)) as server:  # the warehouse is gone from it
        found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "FAILED"
    target = {t["target"]: t for t in found["targets"]}["warehouse:wh"]
    assert target["status"] == "FAILED"
    assert "no warehouse is named 'wh'" in target["lastError"]


async def test_the_log_tells_what_happened_without_the_user_ids(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with running(make_config(ADMIN)) as server:
        with capture_logs() as logs:
            regulation_id = await regulate(http, server, "SUPPRESS_WITH_DELETE", GONE, KEPT)
            await settled(http, server, regulation_id)
    events = {entry["event"]: entry for entry in logs}
    created = events["regulation_created"]
    assert (created["regulation"], created["subjects"], created["targets"]) == (
        regulation_id,
        2,
        ["outbox"],
    )
    assert events["regulations_taken_up"]["suppressed_users"] == 2
    assert events["regulation_target_finished"]["overall"] == "FINISHED"
    assert GONE not in repr(logs)
    assert KEPT not in repr(logs)


async def test_object_ids_are_recorded_as_not_supported(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    body = {
        "regulationType": "SUPPRESS_WITH_DELETE",
        "subjectType": "OBJECT_ID",
        "subjectIds": [GONE],
    }
    async with running(make_config(ADMIN)) as server:
        async with http.post(f"{server.url}/regulations", json=body, headers=AUTH) as response:
            assert response.status == 200
            regulation_id = (await response.json())["data"]["regulateId"]
        found = await regulation(http, server, regulation_id)
        await send(http, server, [track("o-1", GONE)])
    assert (found["overallStatus"], found["subjectType"], found["targets"]) == (
        "NOT_SUPPORTED",
        "OBJECT_ID",
        [],
    )
    assert query(data_dir, "SELECT message_id FROM messages") == [("o-1",)]
