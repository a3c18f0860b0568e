"""The console on the JetStream backend: two real nodes on a real three-server cluster, real HTTP,
people added the way `cdpd users add` adds them. What one node accepted, the other's console
shows; a session made on one node is good on the other; the access rules are the SQLite
backend's."""

from __future__ import annotations

import asyncio
import functools
import io
import re
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import pytest
from segment.analytics.client import Client
from yarl import URL

from cdpd import cli
from cdpd.cluster.console import ConsoleStage
from cdpd.cluster.layout import Layout
from cdpd.cluster.node import Node, running_node
from cdpd.cluster.profiles import ProfilesLeader
from cdpd.cluster.warehouse import WarehouseLeader
from cdpd.config import Config
from tests.cluster_support import (
    empty_postgres_warehouse,
    jetstream_config,
    jetstream_text,
    profiles_toml,
)
from tests.console_support import (
    ADMIN_TOKEN,
    PASSWORD,
    add_cluster_person,
    console_node_config,
    signed_in,
    workspaces_toml,
)
from tests.helpers import OTHER_WRITE_KEY, WRITE_KEY, basic_auth
from tests.integration.test_cluster_delivery import until
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink, status

WEBSITE = "/console/w/acme/sources/website"


@asynccontextmanager
async def _two_nodes(
    tmp_path: Path, cluster: JetStreamCluster, sink: Sink
) -> AsyncIterator[tuple[Node, Node]]:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                running_node(console_node_config(tmp_path, cluster, sink.url, name), node_name=name)
            )
            for name in ("a", "b")
        ]
        await add_cluster_person(nodes[0].config, "ada", {"acme": "member"})
        await add_cluster_person(nodes[0].config, "rita", {"acme": "read-only"})
        await add_cluster_person(nodes[0].config, "gus", {"globex": "owner"})
        yield nodes[0], nodes[1]


@asynccontextmanager
async def _browsing_b(
    tmp_path: Path, cluster: JetStreamCluster, sink: Sink, name: str
) -> AsyncIterator[tuple[Node, Node, aiohttp.ClientSession, str]]:
    """Two nodes, and `name` signed in on the second."""
    async with (
        _two_nodes(tmp_path, cluster, sink) as (a, b),
        signed_in(b.url, name) as (client, csrf),
    ):
        yield a, b, client, csrf


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink() as running:
        yield running


def _send_with_the_official_client(node: Node, write_key: str, events: list[str]) -> None:
    client = Client(write_key, host=node.url, sync_mode=True)
    for n, event in enumerate(events):
        client.track(user_id=f"u{n}", event=event, properties={"order_id": f"o{n}"})
    client.flush()


async def _debugger_events(
    client: aiohttp.ClientSession, path: str, wanted: int, timeout_s: float = 60
) -> list[dict[str, Any]]:
    """The debugger's `message` events until `wanted` came."""
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s), client.get(path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        async for line in resp.content:
            if line.startswith(b"data: "):
                found.append(msgspec.json.decode(line[6:]))
                if len(found) >= wanted:
                    return found
    return found


async def test_the_debugger_on_one_node_shows_what_the_other_accepted(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink
) -> None:
    async with _browsing_b(tmp_path, js_cluster, sink, "ada") as (a, _, client, _):
        await asyncio.to_thread(
            _send_with_the_official_client, a, WRITE_KEY, ["Order Completed", "Cart Viewed"]
        )
        await asyncio.to_thread(_send_with_the_official_client, a, OTHER_WRITE_KEY, ["Other"])
        found = await _debugger_events(client, WEBSITE + "/debugger", 2)
        assert sorted(e["event"] for e in found) == ["Cart Viewed", "Order Completed"]
        assert all(msgspec.json.decode(e["payload"])["type"] == "track" for e in found)

        # ... and it goes on live: what A accepts after the page opened comes too.
        left_before = await _debugger_consumers(js_cluster.urls)  # the first watcher's, if any

        async def later() -> None:
            await until(lambda: _new_debugger_consumer(js_cluster.urls, left_before))
            await asyncio.to_thread(_send_with_the_official_client, a, WRITE_KEY, ["Live One"])

        sending = asyncio.create_task(later())
        found = await _debugger_events(client, WEBSITE + "/debugger", 3)
        await sending
        assert "Live One" in {e["event"] for e in found}
        assert "Other" not in {e["event"] for e in found}  # the backend source's own
        # The watchers left: their consumers are deleted, not left for their 30 s of inactivity.
        await until(lambda: _no_debugger_consumer(js_cluster.urls), timeout_s=15)


async def _debugger_consumers(urls: list[str]) -> set[str]:
    """The messages stream's ephemeral consumers (only the debugger makes them here)."""
    client = await nats.connect(urls)
    try:
        found = await client.jetstream().consumers_info(Layout().stream)
        return {c.name for c in found if not c.config.durable_name}
    finally:
        await client.close()


async def _new_debugger_consumer(urls: list[str], before: set[str]) -> bool:
    return bool(await _debugger_consumers(urls) - before)


async def _no_debugger_consumer(urls: list[str]) -> bool:
    return not await _debugger_consumers(urls)


async def test_a_session_made_on_one_node_is_good_on_the_other(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink
) -> None:
    async with (
        _two_nodes(tmp_path, js_cluster, sink) as (a, b),
        signed_in(a.url, "ada") as (
            client,
            csrf,
        ),
    ):
        cookie = client.cookie_jar.filter_cookies(URL(a.url + "/console/"))["cdpd_session"].value
        headers = {"Cookie": f"cdpd_session={cookie}"}
        async with aiohttp.ClientSession(b.url, headers=headers) as other:
            async with other.get(WEBSITE) as resp:
                assert resp.status == 200
                assert "Source: website" in await resp.text()
            async with other.post(
                "/console/signout", data={"csrf": csrf}, headers={"Origin": b.url},
                allow_redirects=False,
            ) as resp:  # fmt: skip
                assert resp.status == 303
        async with client.get(WEBSITE, allow_redirects=False) as resp:  # ended on A too
            assert resp.status == 303
            assert resp.headers["Location"].startswith("/console/signin")


async def test_access_rules_are_the_same_as_on_sqlite(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink
) -> None:
    async with _two_nodes(tmp_path, js_cluster, sink) as (_, b):
        async with aiohttp.ClientSession(b.url) as anonymous:
            assert await _status(anonymous, "get", WEBSITE) == 303
        async with signed_in(b.url, "rita") as (client, csrf):  # read-only of acme
            assert await _status(client, "get", WEBSITE) == 200
            assert await _status(client, "get", WEBSITE + "/write-key") == 403
            replay = "/console/w/acme/destinations/hook_a/replay"
            assert await _status(client, "post", replay, csrf, b.url) == 403
            assert await _status(client, "get", "/console/w/globex/") == 404
            assert await _status(client, "get", "/console/w/acme/sources/backend") == 404
            assert await _status(client, "get", "/console/w/acme/destinations/hook_b") == 404
        async with signed_in(b.url, "ada") as (client, csrf):  # member of acme
            assert await _status(client, "get", WEBSITE + "/write-key") == 200
            retry = "/console/w/acme/destinations/hook_a/retry"
            assert await _status(client, "post", retry, csrf, b.url) == 303
            assert await _status(client, "post", retry, "forged", b.url) == 403
        async with signed_in(b.url, "gus") as (client, _):  # owner of globex only
            assert await _status(client, "get", "/console/w/globex/sources/backend") == 200
            assert await _status(client, "get", WEBSITE) == 404
        async with aiohttp.ClientSession(b.url) as stranger:
            form = {"name": "ada", "password": "not the password"}
            async with stranger.post(
                "/console/signin", data=form, headers={"Origin": b.url}, allow_redirects=False
            ) as resp:
                assert resp.status == 401


async def _status(
    client: aiohttp.ClientSession, method: str, path: str, csrf: str = "", origin: str = ""
) -> int:
    if method == "get":
        async with client.get(path, allow_redirects=False) as resp:
            return resp.status
    form = {"csrf": csrf, "enabled": "true"}
    async with client.post(path, data=form, headers={"Origin": origin}, allow_redirects=False) as r:
        return r.status


async def test_delivery_overview_shows_the_clusters_dead_letters_and_replays_them(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink
) -> None:
    sink.default = status(400, body="bad request")  # hook_a gives up at once on a 4xx
    async with _browsing_b(tmp_path, js_cluster, sink, "ada") as (a, b, client, csrf):
        await asyncio.to_thread(_send_with_the_official_client, a, WRITE_KEY, ["Order Completed"])
        page = "/console/w/acme/destinations/hook_a"

        async def dead_total() -> str:
            async with client.get(page) as resp:
                assert resp.status == 200
                text = await resp.text()
            found = re.search(r"<span data-dead-total>(\d+)", text)
            assert found, text
            return found.group(1)

        async def count(name: str) -> str:
            async with client.get(page) as resp:
                found = re.search(f'data-count="{name}">([^<]*)<', await resp.text())
            assert found
            return found.group(1)

        await until(lambda: _equal(dead_total(), "1"))
        await until(lambda: _equal(count("failed"), "1"))  # counted by node A, shown by B
        async with client.get(page) as resp:
            text = await resp.text()
        assert "Circuit: <strong data-circuit>" in text
        assert "bad request" in text  # the dead letter's last error
        sink.default = status(200)
        async with client.post(
            page + "/replay", data={"csrf": csrf}, headers={"Origin": b.url},
            allow_redirects=False,
        ) as resp:  # fmt: skip
            assert resp.status == 303
            assert "1%20dead%20letters%20queued%20again" in resp.headers["Location"]
        await until(lambda: _equal(dead_total(), "0"))
        await until(lambda: _true(any(r.status == 200 for r in sink.received)))


async def test_rejects_and_violations_come_from_the_aux_stream(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink, http: aiohttp.ClientSession
) -> None:
    async with _browsing_b(tmp_path, js_cluster, sink, "rita") as (a, _, client, _):
        auth = {"Authorization": basic_auth(WRITE_KEY)}
        batch = [
            {"type": "track", "userId": "u", "messageId": "no-event"},
            {"type": "track", "userId": "u", "event": "Order Completed", "messageId": "bad",
             "properties": {"revenue": "12"}},
        ]  # fmt: skip
        async with http.post(f"{a.url}/v1/batch", json={"batch": batch}, headers=auth) as resp:
            assert resp.status == 200
        async with client.get(WEBSITE + "?window=1h") as resp:
            text = await resp.text()
        rejected = re.search(r"Rejected in the last 1h.*?<tbody>(.*?)</tbody>", text, re.S)
        assert rejected is not None, text
        assert "missing_event" in rejected.group(1)
        async with client.get(WEBSITE + "/protocols") as resp:
            text = await resp.text()
        assert "properties.order_id is required" in text
        assert "<code>bad</code>" in text
        assert "The schema is not observed on this backend yet." in text


async def _equal(value: Awaitable[str], wanted: str) -> bool:
    return await value == wanted


async def _true(value: bool) -> bool:
    return value


BUYERS = "/console/w/acme/audiences/buyers"


def _profiles_node_config(
    tmp_path: Path, cluster: JetStreamCluster, sink: Sink, name: str
) -> Config:
    """A console node with [identity] and Engage: acme shows the audience `buyers`."""
    text = jetstream_text(
        tmp_path / name,
        cluster.urls,
        workspaces_toml(sink.url)
        + profiles_toml(sink.url, {"buyers": "event('Order').count() >= 2"}),
    )
    text = text.replace(
        'destinations = ["hook_a"]\n', 'destinations = ["hook_a"]\naudiences = ["buyers"]\n', 1
    )
    return jetstream_config(tmp_path / f"{name}.toml", text)


def _send_a_buyer_merged_from_an_anonymous_visit(node: Node) -> None:
    """u1 orders twice; x1 views a cart; then u1 signs in as x1: a merge. The backend source
    (globex's) gives u1 a trait acme must not see."""
    client = Client(WRITE_KEY, host=node.url, sync_mode=True)
    client.track(user_id="u1", event="Order")
    client.track(user_id="u1", event="Order")
    client.track(anonymous_id="x1", event="Cart Viewed")
    client.identify(user_id="u1", anonymous_id="x1", traits={"plan": "pro"})
    client.flush()
    other = Client(OTHER_WRITE_KEY, host=node.url, sync_mode=True)
    other.identify(user_id="u1", traits={"secret": "globex's"})
    other.flush()


async def _page(client: aiohttp.ClientSession, path: str, wanted: int = 200) -> str:
    async with client.get(path) as resp:
        text = await resp.text()
        assert resp.status == wanted, text
        return text


async def _profile_page(client: aiohttp.ClientSession) -> str:
    return await _page(client, "/console/w/acme/profiles?lookup=user_id:u1")


async def _shows_the_buyer(client: aiohttp.ClientSession) -> bool:
    async with client.get("/console/w/acme/profiles?lookup=user_id:u1") as resp:
        text = await resp.text()
    return resp.status == 200 and "No merges." not in text and "plan" in text


def _holds_the_lease(node: Node) -> bool:
    leader = node.stages["profiles"]
    assert isinstance(leader, ProfilesLeader)
    return leader.identity is not None


def _assert_the_profile(text: str) -> None:
    identifiers = re.search(r"<table data-identifiers>(.*?)</table>", text, re.S)
    assert identifiers is not None, text
    pattern = r"<td>(user_id|anonymous_id)</td><td><code>(\w+)</code>"
    found = sorted(re.findall(pattern, identifiers.group(1)))
    assert found == [("anonymous_id", "x1"), ("user_id", "u1")], identifiers.group(1)
    assert "<td>plan</td><td><code>&#34;pro&#34;</code></td><td>website</td>" in text
    assert "secret" not in text  # the backend source's trait: globex's
    assert re.search(r"<code>\w+</code> merged into <code>\w+</code> at", text), text


async def _assert_the_audience(client: aiohttp.ClientSession) -> None:
    listing = await _page(client, "/console/w/acme/audiences")
    assert 'data-size="buyers">1<' in listing
    text = await _page(client, BUYERS)
    assert "<strong data-size>1</strong> members" in text
    days = re.search(r"<table data-days>.*?<tbody>(.*?)</tbody>", text, re.S)
    assert days is not None, text
    assert re.fullmatch(
        r'<tr><td>\d{4}-\d\d-\d\d</td><td class="num">1</td><td class="num">0</td>'
        r'<td class="num">0</td></tr>\s*',
        days.group(1),
    ), days.group(1)
    newest = re.search(r"<table data-newest>.*?<tbody>(.*?)</tbody>", text, re.S)
    assert newest is not None
    assert "<td>entered</td>" in newest.group(1)


async def test_the_profiles_and_audiences_pages_on_the_lease_holder_and_on_another_node(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink
) -> None:
    """a holds the profiles lease; b, with no snapshot yet, says so; a lets the lease go (with
    a last snapshot) and b takes it over, restoring it; a, back, reads that snapshot."""
    config = functools.partial(_profiles_node_config, tmp_path, js_cluster, sink)
    async with AsyncExitStack() as first:
        a = await first.enter_async_context(running_node(config("a"), node_name="a"))
        await until(lambda: _true(_holds_the_lease(a)))
        await add_cluster_person(a.config, "ada", {"acme": "member"})
        await add_cluster_person(a.config, "gus", {"globex": "owner"})
        async with running_node(config("b"), node_name="b") as b:
            async with signed_in(b.url, "ada") as (on_b, csrf):
                text = await _page(on_b, "/console/w/acme/profiles")
                assert "No snapshot of the profiles has reached this node yet" in text
                text = await _page(on_b, "/console/w/acme/profiles?lookup=user_id:u1", 404)
                assert "No snapshot of the profiles has reached this node yet" in text
                text = await _page(on_b, "/console/w/acme/audiences")
                assert "No snapshot of the profiles has reached this node yet" in text
                assert 'data-size="buyers">-<' in text  # not a made-up 0
                add = "/console/w/acme/add-source"  # still not made from the console here
                assert "Not available on this backend yet" in await _page(on_b, add)
                assert await _status(on_b, "post", add, csrf, b.url) == 409
            async with signed_in(b.url, "gus") as (other, _):
                for page in ("profiles", "audiences", "audiences/buyers"):
                    assert await _status(other, "get", f"/console/w/acme/{page}") == 404

            await asyncio.to_thread(_send_a_buyer_merged_from_an_anonymous_visit, a)
            async with signed_in(a.url, "ada") as (on_a, _):
                await until(lambda: _shows_the_buyer(on_a))
                text = await _profile_page(on_a)
                _assert_the_profile(text)
                assert "holds the profiles lease" in text
                events = re.search(r"<ul class=\"events\" data-events>(.*?)</ul>", text, re.S)
                assert events is not None, text
                assert "track Order" in events.group(1)
                assert "track Cart Viewed" in events.group(1)
                assert "&#34;anonymousId&#34;: &#34;x1&#34;" in text  # the merge's message
                await until(lambda: _audience_size(on_a, "1"))
                await _assert_the_audience(on_a)

            await first.aclose()  # a lets the lease go after a last snapshot
            await until(lambda: _true(_holds_the_lease(b)))
            async with signed_in(b.url, "ada") as (on_b, _):
                text = await _profile_page(on_b)  # b's live store, restored
                _assert_the_profile(text)
                await _assert_the_audience(on_b)

            async with (
                running_node(config("a"), node_name="a") as a,
                signed_in(a.url, "ada") as (on_a, _),
            ):
                assert not _holds_the_lease(a)
                await until(lambda: _shows_the_buyer(on_a))  # a's view of the snapshot
                text = await _profile_page(on_a)
                _assert_the_profile(text)
                assert "reads the newest snapshot of the profiles" in text
                assert "data-events-not-kept>–:" in text  # not kept here: a dash, no list
                assert "data-events>" not in text
                assert "–: the message is kept by the node holding the profiles lease" in text
                await _assert_the_audience(on_a)


async def _audience_size(client: aiohttp.ClientSession, wanted: str) -> bool:
    return f'data-size="buyers">{wanted}<' in await _page(client, "/console/w/acme/audiences")


async def test_cdpd_users_adds_a_person_every_node_knows(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _two_nodes(tmp_path, js_cluster, sink) as (a, b):
        path = str(tmp_path / "a.toml")
        monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
        code = await asyncio.to_thread(
            cli.main,
            ["users", "add", "zoe", "--workspace", "acme", "--role", "owner",
             "--password-stdin", "--config", path],
        )  # fmt: skip
        assert code == 0
        async with signed_in(b.url, "zoe") as (client, _):
            assert await _status(client, "get", WEBSITE) == 200
        listed = await asyncio.to_thread(cli.main, ["users", "list", "--config", path])
        assert listed == 0
        code = await asyncio.to_thread(
            cli.main, ["tokens", "create", "--name", "x", "--workspace", "acme",
                       "--role", "owner", "--config", path],
        )  # fmt: skip
        assert code == 2  # tokens: the admin token only, on this backend
        assert a.url


async def test_the_warehouse_page_shows_the_lease_holder_and_the_syncs_and_syncs_now(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    sink: Sink,
    postgres_test_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    warehouse = (await empty_postgres_warehouse(postgres_test_dsn)).toml  # whatever ran before
    warehouse = warehouse.replace("interval_s = 0.2", "interval_s = 3600")  # loads: asked ones

    def config(name: str) -> Config:
        text = jetstream_text(tmp_path / name, js_cluster.urls, workspaces_toml(sink.url))
        text = text.replace(
            'destinations = ["hook_a"]\n', 'destinations = ["hook_a"]\nwarehouses = ["wh"]\n', 1
        )
        return jetstream_config(tmp_path / f"{name}.toml", text + warehouse)

    async with running_node(config("a"), node_name="a") as a:
        leaders = a.stages["warehouses"]
        assert isinstance(leaders, list)
        holder: WarehouseLeader = leaders[0]
        await until(lambda: _first_sync(holder))  # a holds the lease, and synced at once
        async with running_node(config("b"), node_name="b") as b:
            await add_cluster_person(a.config, "ada", {"acme": "member"})
            await asyncio.to_thread(_send_with_the_official_client, b, WRITE_KEY, ["Order"])
            assert await _cli_status(tmp_path / "b.toml") == 0  # one message behind, on a
            out = capsys.readouterr().out
            assert "position  0 (outbox last seq 1; 1 to load)" in out, out
            assert "lease     held by node a, which loads it" in out, out
            async with signed_in(b.url, "ada") as (client, csrf):
                page = "/console/w/acme/warehouses/wh"
                async with client.get(page) as resp:
                    text = await resp.text()
                assert "<strong data-holder>a</strong>" in text, text
                assert '<td>success</td><td class="num">1</td>' not in text  # an hour away
                form = {"csrf": csrf}
                origin = {"Origin": b.url}
                async with client.post(page + "/sync", data=form, headers=origin) as resp:
                    assert resp.status == 200  # the page, after the redirect
                    text = await resp.text()
                assert "sync success: 1 messages (node a)" in text, text  # the notice
                assert '<td>success</td><td class="num">1</td>' in text  # the sync, listed
                assert [r.messages for r in holder.reports] == [0, 1]  # a loaded, asked by b
                async with (
                    holder._syncing,  # a sync running on a, as far as a can tell
                    client.post(page + "/sync", data=form, headers=origin) as resp,
                ):
                    text = await resp.text()
                assert "a sync is already running on node a" in text, text
                assert len(holder.reports) == 2  # not queued: never two syncs at once
                assert await _status(client, "get", "/console/w/globex/warehouses/wh") == 404
            assert await _cli_sync(tmp_path / "b.toml") == 0
            assert "success, 0 messages loaded" in capsys.readouterr().out
            assert len(holder.reports) == 3
            assert await _cli_status(tmp_path / "b.toml", "--json") == 0
            status = msgspec.json.decode(capsys.readouterr().out)
            assert (status["position"], status["outbox_last_seq"], status["holder"]) == (1, 1, "a")
    assert await _cli_sync(tmp_path / "b.toml") == 1
    assert "no node holds the lease of warehouse wh" in capsys.readouterr().err
    assert await _cli_status(tmp_path / "b.toml") == 0
    assert "lease     held by no node now" in capsys.readouterr().out

    closed = tmp_path / "closed.toml"
    servers = 'servers = ["nats://127.0.0.1:1"]\nconnect_timeout_s = 0.5'
    closed.write_text(re.sub(r"servers = \[.*\]", servers, (tmp_path / "b.toml").read_text()))
    assert await _cli_status(closed) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.startswith("cdpd: cannot connect to JetStream at nats://127.0.0.1:1"), err
    assert err.count("\n") == 1, err  # one line, no traceback


async def _cli_sync(config: Path) -> int:
    return await asyncio.to_thread(cli.main, ["warehouse", "sync", "wh", "--config", str(config)])


async def _cli_status(config: Path, *options: str) -> int:
    command = ["warehouse", "status", *options, "--config", str(config)]
    return await asyncio.to_thread(cli.main, command)


async def _first_sync(leader: WarehouseLeader) -> bool:
    return bool(leader.reports)


async def test_a_page_says_so_when_the_cluster_does_not_answer(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink
) -> None:
    async with _browsing_b(tmp_path, js_cluster, sink, "ada") as (_, b, client, _):
        stage = b.stages["console"]
        assert isinstance(stage, ConsoleStage)
        async with asyncio.timeout(10), stage.console.parts.data.watch("website", 10):
            js_cluster.stop_all()  # a watcher leaving then leaves without an error
        for page in (WEBSITE, "/console/w/acme/audiences"):
            async with client.get(page) as resp:
                assert resp.status == 503
                assert "The JetStream cluster did not answer" in await resp.text()
        for index in range(3):  # back, so that the nodes stop as they do with a cluster
            js_cluster.start(index)
        await js_cluster.ready()
        await until(lambda: _page_status(client, WEBSITE, 200))


async def _page_status(client: aiohttp.ClientSession, path: str, wanted: int) -> bool:
    async with client.get(path) as resp:
        return resp.status == wanted


PRIVACY = "/console/w/acme/privacy"


def _track_with_the_official_client(node: Node, write_key: str, properties: dict[str, Any]) -> None:
    client = Client(write_key, host=node.url, sync_mode=True)
    client.track(user_id="u1", event="Signed Up", properties=properties)
    client.flush()


async def _privacy_page(client: aiohttp.ClientSession, query: str = "") -> tuple[str, str, str]:
    """The page, its inbox part and its inventory part."""
    async with client.get(f"{PRIVACY}?{query}") as resp:
        assert resp.status == 200
        text = await resp.text()
    inbox, inventory = text.split("data-inventory-count", 1)
    return text, inbox, inventory


async def _classify(
    client: aiohttp.ClientSession, origin: str, csrf: str, field: str, class_: str,
    workspace: str = "acme",
) -> aiohttp.ClientResponse:  # fmt: skip
    async with client.post(
        f"/console/w/{workspace}/privacy/classify",
        data={"csrf": csrf, "field": field, "class": class_},
        headers={"Origin": origin}, allow_redirects=False,
    ) as resp:  # fmt: skip
        await resp.read()
        return resp


async def test_the_privacy_page_on_one_node_classifies_what_the_other_saw(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink, http: aiohttp.ClientSession
) -> None:
    async with _browsing_b(tmp_path, js_cluster, sink, "ada") as (a, b, client, csrf):
        await asyncio.to_thread(
            _track_with_the_official_client, a, WRITE_KEY, {"email": "ada@example.com"}
        )
        await asyncio.to_thread(
            _track_with_the_official_client, a, OTHER_WRITE_KEY, {"ssn_x": "078-05-1120"}
        )

        async def inbox_shows_email() -> bool:
            return "properties.email" in (await _privacy_page(client))[1]

        await until(inbox_shows_email)
        _, inbox, _ = await _privacy_page(client)
        assert 'aria-label="Red: properties.email"' in inbox  # a member's buttons
        assert "properties.ssn_x" not in inbox  # globex's source sent it
        resp = await _classify(client, b.url, csrf, "properties.email", "red")
        assert resp.status == 303
        assert "properties.email%20is%20red" in resp.headers["Location"]
        _, inbox, inventory = await _privacy_page(client)
        assert "properties.email" not in inbox
        assert re.search(r"properties\.email</code></td><td data-class>red", inventory)
        # Refused, nothing changed: another workspace's field, an unknown class.
        assert (await _classify(client, b.url, csrf, "properties.ssn_x", "red")).status == 404
        assert (await _classify(client, b.url, csrf, "properties.email", "purple")).status == 422

        async with signed_in(a.url, "ada") as (on_a, _):
            _, _, inventory = await _privacy_page(on_a)
            assert re.search(r"properties\.email</code></td><td data-class>red", inventory)
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(f"{a.url}/admin/privacy/inventory", headers=bearer) as got:
            assert got.status == 200
            fields = (await got.json())["fields"]
        assert [(f["field"], f["class"], f["classified_by"]) for f in fields] == [
            ("properties.email", "red", "console:ada")
        ]

        async with signed_in(b.url, "rita") as (read_only, rita_csrf):
            _, inbox, inventory = await _privacy_page(read_only)
            assert "properties.email" in inventory
            assert "Red: properties.email" not in inventory  # no buttons for read-only
            resp = await _classify(read_only, b.url, rita_csrf, "properties.email", "green")
            assert resp.status == 403
        async with signed_in(b.url, "gus") as (other, gus_csrf):  # owner of globex only
            assert await _status(other, "get", PRIVACY) == 404
            resp = await _classify(other, b.url, gus_csrf, "properties.email", "green", "globex")
            assert resp.status == 404  # acme's field
        async with http.get(f"{b.url}/admin/privacy/inventory", headers=bearer) as got:
            assert [f["class"] for f in (await got.json())["fields"]] == ["red"]


async def test_the_privacy_page_pages_and_finds_fields_by_name_on_a_cluster(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink
) -> None:
    fields = {f"f{n:03}": n for n in range(60)}
    async with _browsing_b(tmp_path, js_cluster, sink, "ada") as (a, b, client, csrf):
        await asyncio.to_thread(_track_with_the_official_client, a, WRITE_KEY, fields)

        async def all_arrived() -> bool:
            return "data-inbox-count>60<" in (await _privacy_page(client, "q=properties.f"))[0]

        await until(all_arrived)
        assert (await _classify(client, b.url, csrf, "properties.f000", "green")).status == 303
        pattern = r"<tr><td><code>properties\.(f\d+)</code>"

        text, inbox, inventory = await _privacy_page(client, "q=properties.f")
        assert "data-inbox-count>59<" in text
        assert re.findall(pattern, inbox) == [f"f{n:03}" for n in range(1, 51)]
        assert re.findall(pattern, inventory) == ["f000"]
        assert "1–50 of 59" in text
        assert 'href="?q=properties.f&amp;inbox=2&amp;inventory=1" rel="next"' in text
        text, inbox, _ = await _privacy_page(client, "q=properties.f&inbox=2")
        assert re.findall(pattern, inbox) == [f"f{n:03}" for n in range(51, 60)]
        assert "51–59 of 59" in text
        assert 'rel="next"' not in text
        text, inbox, inventory = await _privacy_page(client, "q=F05")  # either case
        assert re.findall(pattern, inbox) == [f"f{n:03}" for n in range(50, 60)]
        assert re.findall(pattern, inventory) == []
        _, inbox, inventory = await _privacy_page(client, "q=f000")
        assert re.findall(pattern, inbox) == []
        assert re.findall(pattern, inventory) == ["f000"]
