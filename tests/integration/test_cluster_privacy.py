"""The privacy portal on the JetStream backend: a real three-server cluster, two cdpd nodes in
one process (each its own connection), the official Python client, a real webhook receiver and
a real PostgreSQL warehouse. A field seen through one node is classified on the other, and
every node applies the classification at delivery and at warehouse load."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from segment.analytics import Client

from cdpd import cli
from cdpd.clock import SystemClock
from cdpd.cluster import connect
from cdpd.cluster.layout import Layout
from cdpd.cluster.node import Node, running_node
from cdpd.cluster.privacy_stage import (
    REFRESH_EVERY_S,
    InboxFolder,
    InventoryView,
    PrivacyStage,
)
from cdpd.cluster.privacy_store import ClusterPrivacy
from cdpd.config import Config, JetStreamConfig
from cdpd.governance.chain import Findings
from cdpd.model.rows import OutboxRow
from cdpd.privacy.controls import Inventory
from cdpd.privacy.portal import Portal
from cdpd.privacy.settings import PrivacyConfig
from cdpd.privacy.store import InboxField
from tests.cluster_support import empty_postgres_warehouse, jetstream_config, jetstream_text
from tests.helpers import WRITE_KEY, FakeClock, basic_auth
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink

ADMIN = '[admin]\ntoken = "adm1n"\n'
WRITE_AUTH = {"Authorization": basic_auth(WRITE_KEY)}
BEARER = {"Authorization": "Bearer adm1n"}
CARD = "4111 1111 1111 1111"


def _view(node: Node) -> PrivacyStage:
    stage = node.stages["privacy"]
    assert isinstance(stage, PrivacyStage)
    return stage


async def until(check: Callable[[], Awaitable[object] | object], timeout_s: float = 60) -> Any:
    """The first true value `check()` gives or resolves to (polled: the cluster has no event
    for it)."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = check()
            if inspect.isawaitable(found):
                found = await found
            if found:
                return found
            await asyncio.sleep(0.05)


async def _get(http: aiohttp.ClientSession, node: Node, path: str) -> Any:
    async with http.get(f"{node.url}/admin/privacy/{path}", headers=BEARER) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["fields"]


async def _classify(
    http: aiohttp.ClientSession, node: Node, field: str, class_: str | None
) -> aiohttp.ClientResponse:
    body = {"field": field, "class": class_}
    async with http.post(f"{node.url}/admin/privacy/classify", json=body, headers=BEARER) as resp:
        await resp.read()
        return resp


def _send(node: Node, user: str, prefix: str, count: int) -> list[str]:
    """Order Completed events through the official client, flushed; their messageIds."""
    errors: list[Any] = []
    client = Client(
        WRITE_KEY,
        host=node.url,
        upload_interval=0.05,
        on_error=lambda error, batch: errors.append(error),
    )
    sent = []
    try:
        for n in range(count):
            ok, message = client.track(
                user,
                "Order Completed",
                {"order_id": f"{prefix}-{n}", "payment": CARD, "total": 27.5},
                message_id=f"{prefix}-{n}",
            )
            assert ok
            sent.append(message["messageId"])
        client.flush()
    finally:
        client.join()
    assert errors == []
    return sent


@contextlib.asynccontextmanager
async def _buckets(cluster: JetStreamCluster) -> AsyncIterator[ClusterPrivacy]:
    """The privacy buckets on a connection of the test's own, as a node has them."""
    config = JetStreamConfig(servers=cluster.urls)
    layout = Layout.of(config)
    async with connect.connected(config) as client:
        js = client.jetstream()
        await connect.ensure(js, config, layout)
        yield await ClusterPrivacy.of(js, layout)


def _json_lines(out: str, key: str) -> list[Any]:
    """The CLI's JSON lines, those with `key` (the nodes in this process log to stdout too,
    as JSON once a test has configured logging as the real program does)."""
    found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [entry for entry in found if key in entry]


def _config(tmp_path: Path, cluster: JetStreamCluster, name: str, extra: str) -> Config:
    text = jetstream_text(tmp_path / name, cluster.urls, ADMIN + extra)
    return jetstream_config(tmp_path / f"{name}.toml", text)


async def test_a_field_seen_on_one_node_is_classified_on_the_other_and_both_apply_it(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    postgres_test_dsn: str,
    http: aiohttp.ClientSession,
) -> None:
    warehouse = await empty_postgres_warehouse(postgres_test_dsn)
    async with Sink() as sink:
        extra = (
            f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{sink.url}"\n'
            + warehouse.toml
            + '[privacy.destinations.hook]\nred = "block"\n'
            + '[privacy.warehouses.wh]\nred = "block"\n'
        )
        async with (
            running_node(_config(tmp_path, js_cluster, "a", extra), node_name="a") as a,
            running_node(_config(tmp_path, js_cluster, "b", extra), node_name="b") as b,
        ):
            before = await asyncio.to_thread(_send, a, "u1", "before", 1)

            async def seen_on_b() -> Any:
                fields = await _get(http, b, "inbox?source=website")
                return next((f for f in fields if f["field"] == "properties.payment"), None)

            seen = await until(seen_on_b)
            assert (seen["suggested_class"], seen["matcher"]) == ("red", "credit card")
            assert seen["sample"] == "4*** **** **** ***1"
            await sink.wait_for(lambda s: len(s.messages) == 1)
            assert sink.messages[0]["properties"]["payment"] == CARD  # nobody classified it yet

            async def loaded() -> Any:
                with contextlib.suppress(Exception):  # the table appears with the first load
                    return await warehouse.rows("website", "order_completed", "id, payment")
                return None

            assert await until(loaded) == [{"id": before[0], "payment": CARD}]

            answer = await _classify(http, b, "properties.payment", "red")
            assert answer.status == 200
            assert _view(b).view.inventory.classes == {"properties.payment": "red"}
            await until(lambda: _settled(a, "properties.payment"))

            inventory = await _get(http, a, "inventory")
            assert [(f["field"], f["class"], f["classified_by"]) for f in inventory] == [
                ("properties.payment", "red", "admin api")
            ]
            assert "properties.payment" not in {f["field"] for f in await _get(http, a, "inbox")}
            marked = await _get(http, a, "inbox?all=true")
            assert {f["field"]: f["class"] for f in marked}["properties.payment"] == "red"

            later = await asyncio.to_thread(_send, a, "u2", "via-a", 5)
            later += await asyncio.to_thread(_send, b, "u3", "via-b", 5)
            await sink.wait_for(lambda s: len(s.messages) == 11, timeout_s=30)
            after = [m for m in sink.messages if m["messageId"] in later]
            assert len(after) == 10
            assert all("payment" not in m["properties"] for m in after)
            assert all(m["properties"]["total"] == 27.5 for m in after)  # the rest is intact

            async def all_loaded() -> Any:
                rows = await warehouse.rows("website", "order_completed", "id, payment")
                return rows if len(rows) == 11 else None

            rows = await until(all_loaded)
    by_id = {row["id"]: row["payment"] for row in rows}
    assert by_id[before[0]] == CARD  # loaded before: not rewritten
    assert all(by_id[message_id] is None for message_id in later)


def _settled(node: Node, field: str) -> bool:
    return _view(node).view.inventory.classes.get(field) == "red"


async def test_classifications_from_every_node_and_the_cli_are_all_kept(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_a = _config(tmp_path, js_cluster, "a", "")
    async with (
        running_node(config_a, node_name="a") as a,
        running_node(_config(tmp_path, js_cluster, "b", ""), node_name="b") as b,
    ):
        # Two nodes classifying different fields at the same moment lose none of them.
        fields = [f"properties.field_{n}" for n in range(20)]
        answers = await asyncio.gather(
            *(
                _classify(http, (a, b)[n % 2], field, ("red", "yellow", "green")[n % 3])
                for n, field in enumerate(fields)
            )
        )
        assert {answer.status for answer in answers} == {200}
        wanted = {field: ("red", "yellow", "green")[n % 3] for n, field in enumerate(fields)}
        for node in (a, b):
            await until(lambda node=node: _view(node).view.inventory.classes == wanted)
            assert {f["field"]: f["class"] for f in await _get(http, node, "inventory")} == wanted

        for bad in ({"field": "nowhere", "class": "red"}, {"field": "traits.x", "class": "blue"}):
            async with http.post(
                f"{a.url}/admin/privacy/classify", json=bad, headers=BEARER
            ) as resp:
                assert resp.status == 400
                assert "message" in await resp.json()
        async with http.get(f"{b.url}/admin/privacy/inventory") as resp:
            assert resp.status == 401
        async with http.get(f"{b.url}/admin/privacy/inbox?since=yesterday", headers=BEARER) as r:
            assert r.status == 400

        # The CLI writes the same bucket; the nodes follow it.
        path = str(tmp_path / "a.toml")
        capsys.readouterr()
        run = cli.main
        assert (
            await asyncio.to_thread(
                run, ["--config", path, "privacy", "classify", "properties.field_0", "none"]
            )
            == 0
        )
        assert (
            await asyncio.to_thread(
                run, ["--config", path, "privacy", "classify", "traits.ssn", "red"]
            )
            == 0
        )
        assert (
            await asyncio.to_thread(run, ["--config", path, "privacy", "classify", "email", "red"])
            == 2
        )
        wanted = {**wanted, "traits.ssn": "red"}
        del wanted["properties.field_0"]
        for node in (a, b):
            await until(lambda node=node: _view(node).view.inventory.classes == wanted)
        capsys.readouterr()
        assert (
            await asyncio.to_thread(run, ["--config", path, "privacy", "inventory", "--json"]) == 0
        )
        listed = _json_lines(capsys.readouterr().out, "classified_by")
        assert {f["field"]: f["class"] for f in listed} == wanted
        assert [f["class"] for f in listed] == sorted(
            (f["class"] for f in listed), key=("red", "yellow", "green").index
        )
        assert {f["classified_by"] for f in listed if f["field"] == "traits.ssn"} == {"cli"}

        # Scan reads the messages stream.
        identify = {"userId": "u1", "messageId": "m-ssn", "traits": {"ssn": "x", "plan": "pro"}}
        async with http.post(f"{b.url}/v1/identify", json=identify, headers=WRITE_AUTH) as resp:
            assert resp.status == 200
        assert await asyncio.to_thread(run, ["--config", path, "privacy", "scan", "--json"]) == 0
        (hit,) = _json_lines(capsys.readouterr().out, "unclassified")
        assert (hit["message_id"], hit["source"], hit["red"]) == (
            "m-ssn",
            "website",
            ["traits.ssn"],
        )
        assert "traits.plan" in hit["unclassified"]
        later = "2999-01-01T00:00:00Z"
        assert (
            await asyncio.to_thread(run, ["--config", path, "privacy", "scan", "--since", later])
            == 0
        )
        assert _json_lines(capsys.readouterr().out, "unclassified") == []


async def test_a_view_whose_watch_stalls_reads_the_inventory_again(
    js_cluster: JetStreamCluster,
) -> None:
    async with _buckets(js_cluster) as privacy:
        await privacy.classify("properties.email", "yellow", "2026-12-07T00:00:00.000Z", "test")
        view = InventoryView(privacy, Inventory(), SystemClock())
        await view.load()
        assert view.inventory.classes == {"properties.email": "yellow"}
        stop = asyncio.Event()
        following = asyncio.create_task(view.run(stop))
        try:
            await until(lambda: view.watcher is not None and view.reloads == 2)
            revision = await privacy.classify("properties.ssn", "red", "2026-12-07T00:00:01Z", "t")
            assert await view.applied(revision)  # the watch pushed it
            assert view.inventory.classes["properties.ssn"] == "red"

            assert view.watcher is not None
            await view.watcher._sub.unsubscribe()  # the watch stalls: nothing comes any more
            await privacy.classify("properties.ssn", None, "2026-12-07T00:00:02.000Z", "test")
            await until(lambda: "properties.ssn" not in view.inventory.classes)
            assert view.reloads == 3  # read whole again: nothing else could have applied it
            assert view.inventory.classes == {"properties.email": "yellow"}
        finally:
            stop.set()
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following


def _row(received_at: str, properties: dict[str, Any]) -> OutboxRow:
    payload = {"type": "track", "event": "E", "userId": "u", "properties": properties}
    return OutboxRow("m", "website", "track", "E", "u", None, received_at, json.dumps(payload))


async def test_nodes_merge_their_sightings_and_write_a_field_seen_again_once_a_minute(
    js_cluster: JetStreamCluster,
) -> None:
    async with _buckets(js_cluster) as privacy:
        clock = FakeClock()
        portals = [Portal(PrivacyConfig()), Portal(PrivacyConfig())]  # two nodes' ingest
        a, b = (InboxFolder(privacy, portal, clock) for portal in portals)

        def see(portal: Portal, received_at: str, properties: dict[str, Any]) -> None:
            detector = portal.detector("website")
            assert detector is not None
            detector.observe_rows([_row(received_at, properties)], Findings())

        async def email() -> InboxField:
            (found,) = [f for f in await privacy.inbox() if f.field == "properties.email"]
            return found

        see(portals[0], "2026-12-07T10:00:02.000Z", {"email": None})
        see(portals[1], "2026-12-07T10:00:01.000Z", {"email": "jane@example.com"})
        assert await a.flush() == 1
        assert await b.flush() == 1
        merged = await email()
        assert (merged.first_seen, merged.last_seen) == (
            "2026-12-07T10:00:01.000Z",
            "2026-12-07T10:00:02.000Z",
        )
        assert (merged.suggested_class, merged.sample) == ("yellow", "j***@*******.**m")

        see(portals[0], "2026-12-07T10:00:30.000Z", {"email": None})
        assert await a.flush() == 0  # only seen again: not yet
        assert (await email()).last_seen == "2026-12-07T10:00:02.000Z"
        clock.advance(REFRESH_EVERY_S)
        assert await a.flush() == 1
        assert (await email()).last_seen == "2026-12-07T10:00:30.000Z"
        see(portals[1], "2026-12-07T10:00:40.000Z", {"email": "x@example.com", "ssn": "1"})
        assert await b.flush(everything=True) == 2  # what is pending, at shutdown
        assert [f.field for f in await privacy.inbox()] == ["properties.ssn", "properties.email"]
        assert (await email()).last_seen == "2026-12-07T10:00:40.000Z"
