"""Sources changed from the console on the JetStream backend: real nodes, each with its own
config file and conf.d, on a real three-server cluster. A change made on one node's console is
checked there, stored in the CDPD_confd bucket and put in force on every node; a node started
later brings its conf.d up to date before it serves; hand-written files are left alone."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.js.errors import NoKeysError
from segment.analytics.client import Client

from cdpd.cluster.confd_sync import owned
from cdpd.cluster.layout import Layout
from cdpd.cluster.node import Node, running_node
from cdpd.config import load
from tests.cluster_support import stored_rows
from tests.console_support import add_cluster_person, console_node_config, signed_in
from tests.helpers import basic_auth
from tests.integration.test_cluster_delivery import until
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink

ADD = "/console/w/acme/add-source"
SHOP = "/console/w/acme/sources/shop_app"
HAND_KEY = "handwrittenkey0000000000000000ab"
HAND_WRITTEN = (
    f'[[sources]]\nname = "legacy"\ntype = "server"\nwrite_key = "{HAND_KEY}"\n'
    '[[workspaces]]\nname = "acme"\nsources = ["legacy"]\n'
)


def _config_path(tmp_path: Path, cluster: JetStreamCluster, sink_url: str, node: str) -> Path:
    """Node `node`'s own config file, with `include = "conf.d"` beside it."""
    console_node_config(tmp_path, cluster, sink_url, node)
    folder = tmp_path / f"{node}-etc"
    (folder / "conf.d").mkdir(parents=True)
    path = folder / "cdpd.toml"
    path.write_text('include = "conf.d"\n' + (tmp_path / f"{node}.toml").read_text())
    return path


@asynccontextmanager
async def _node(path: Path, name: str) -> AsyncIterator[Node]:
    async with running_node(load(path), node_name=name, config_path=path) as node:
        yield node


async def _post(
    client: aiohttp.ClientSession, node: Node, path: str, csrf: str, **fields: str
) -> tuple[int, str]:
    headers = {"Origin": node.url}
    async with client.post(
        path, data={"csrf": csrf, **fields}, headers=headers, allow_redirects=False
    ) as resp:
        return resp.status, await resp.text()


async def _ingest_status(http: aiohttp.ClientSession, node: Node, key: str) -> int:
    message = {"type": "track", "userId": "u1", "event": "Probe"}
    async with http.post(
        f"{node.url}/v1/track", json=message, headers={"Authorization": basic_auth(key)}
    ) as resp:
        return resp.status


def _send_with_the_official_client(node: Node, write_key: str) -> list[str]:
    """The official client's errors (none when every request was accepted)."""
    errors: list[str] = []
    client = Client(
        write_key,
        host=node.url,
        sync_mode=True,
        max_retries=0,
        on_error=lambda error, _: errors.append(repr(error)),
    )
    client.track(user_id="u1", event="Order Completed", properties={"order_id": "o1"})
    client.flush()
    return errors


def _write_key_of(path: Path) -> str:
    (source,) = tomllib.loads(path.read_text())["sources"]
    return str(source["write_key"])


async def _history(cluster: JetStreamCluster, key: str) -> list[bytes]:
    client = await nats.connect(cluster.urls)
    try:
        bucket = await client.jetstream().key_value(Layout().confd_bucket)
        return [entry.value or b"" for entry in await bucket.history(key)]
    except NoKeysError:
        return []
    finally:
        await client.close()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink() as running:
        yield running


async def test_a_source_added_on_one_node_is_served_by_every_node(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink, http: aiohttp.ClientSession
) -> None:
    paths = {n: _config_path(tmp_path, js_cluster, sink.url, n) for n in ("a", "b", "c")}
    (paths["c"].parent / "conf.d" / "source-legacy.toml").write_text(HAND_WRITTEN)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(_node(paths["a"], "a"))
        b = await stack.enter_async_context(_node(paths["b"], "b"))
        await add_cluster_person(a.config, "olga", {"acme": "owner"})
        on_a, csrf_a = await stack.enter_async_context(signed_in(a.url, "olga"))
        on_b, csrf_b = await stack.enter_async_context(signed_in(b.url, "olga"))

        # Refused on the node where it is made: nothing stored.
        status, _ = await _post(on_a, a, ADD, csrf_a, name="website", type="server")
        assert status == 422
        assert await _history(js_cluster, "source-website.toml") == []

        status, _ = await _post(on_a, a, ADD, csrf_a, name="shop_app", type="server")
        assert status == 303
        on_disk = paths["a"].parent / "conf.d" / "source-shop_app.toml"
        assert owned(on_disk)
        key = _write_key_of(on_disk)
        assert await _ingest_status(http, a, key) == 200  # in force on a when a answered

        await until(lambda: _serves(b, "shop_app"))
        assert await asyncio.to_thread(_send_with_the_official_client, b, key) == []
        rows = await stored_rows(js_cluster.urls)
        sent = [r.source for r in rows if r.event == "Order Completed"]
        assert sent == ["shop_app"]
        assert _write_key_of(paths["b"].parent / "conf.d" / "source-shop_app.toml") == key

        # A node started after the change serves the key from its first request; the file
        # written by hand in its conf.d is its own.
        c = await stack.enter_async_context(_node(paths["c"], "c"))
        assert await _ingest_status(http, c, key) == 200
        assert await _ingest_status(http, c, HAND_KEY) == 200
        # A key naming c's hand-written file: the others take it, c keeps its own file.
        status, _ = await _post(on_a, a, ADD, csrf_a, name="legacy", type="server")
        assert status == 303
        legacy_key = _write_key_of(paths["a"].parent / "conf.d" / "source-legacy.toml")
        await until(lambda: _serves(b, "legacy"))
        assert await _ingest_status(http, b, legacy_key) == 200
        await until(lambda: _applied_on(c, a))
        assert (paths["c"].parent / "conf.d" / "source-legacy.toml").read_text() == HAND_WRITTEN
        assert await _ingest_status(http, c, legacy_key) == 401
        assert await _ingest_status(http, c, HAND_KEY) == 200

        status, text = await _post(on_b, b, SHOP + "/enabled", csrf_b, enabled="false")
        assert status == 303, text
        await until(lambda: _status_is(http, a, key, 403))
        await until(lambda: _status_is(http, c, key, 403))

        # A removal a's config refuses (a's own file names the source) is refused on a.
        naming = paths["a"].parent / "conf.d" / "hook-shop.toml"
        naming.write_text(
            f'[[destinations]]\nname = "hook_shop"\ntype = "webhook"\nurl = "{sink.url}/s"\n'
            'sources = ["shop_app"]\n'
        )
        status, text = await _post(on_a, a, SHOP + "/remove", csrf_a, confirm="yes")
        assert status == 409
        assert "no source is named &#39;shop_app&#39;" in text
        assert len(await _history(js_cluster, "source-shop_app.toml")) == 2
        assert owned(on_disk)
        naming.unlink()

        status, text = await _post(on_a, a, SHOP + "/remove", csrf_a, confirm="yes")
        assert status == 303, text
        for node in (a, b, c):
            await until(lambda node=node: _status_is(http, node, key, 401))  # type: ignore[misc]
        assert not on_disk.exists()
        assert (paths["c"].parent / "conf.d" / "source-legacy.toml").read_text() == HAND_WRITTEN
        assert await _ingest_status(http, c, HAND_KEY) == 200

        # The bucket kept each change: added, disabled, removed; c never took b's legacy.
        versions = await _history(js_cluster, "source-shop_app.toml")
        assert len(versions) == 3
        assert b"enabled = false" in versions[1]
        assert versions[2] == b""


async def _applied_on(node: Node, origin: Node) -> bool:
    """Whether `node`'s conf.d has reached what `origin`'s has."""
    assert node.confd is not None
    assert origin.confd is not None
    return node.confd.revision >= origin.confd.revision


async def _serves(node: Node, source: str) -> bool:
    return any(s.name == source for s in node.in_force.config.sources)


async def _status_is(http: aiohttp.ClientSession, node: Node, key: str, wanted: int) -> bool:
    return await _ingest_status(http, node, key) == wanted


async def test_a_node_whose_own_files_refuse_the_buckets_keeps_its_config(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink, http: aiohttp.ClientSession
) -> None:
    """c defines shop_app by hand: the bucket's shop_app would be a duplicate there, so c puts
    its conf.d back as it was, at start and at the next change, and keeps serving its own."""
    paths = {n: _config_path(tmp_path, js_cluster, sink.url, n) for n in ("a", "c")}
    mine = paths["c"].parent / "conf.d" / "10-mine.toml"
    mine.write_text(HAND_WRITTEN.replace('"legacy"', '"shop_app"'))
    theirs = paths["c"].parent / "conf.d" / "source-shop_app.toml"
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(_node(paths["a"], "a"))
        await add_cluster_person(a.config, "olga", {"acme": "owner"})
        on_a, csrf_a = await stack.enter_async_context(signed_in(a.url, "olga"))
        status, _ = await _post(on_a, a, ADD, csrf_a, name="shop_app", type="server")
        assert status == 303
        key = _write_key_of(paths["a"].parent / "conf.d" / "source-shop_app.toml")
        # Destinations are built at a node's start on this backend: the form says so.
        status, text = await _post(
            on_a, a, "/console/w/acme/catalog/webhook", csrf_a,
            name="hook_new", url=f"{sink.url}/new", action="add",
        )  # fmt: skip
        assert status == 422
        assert "destinations are built when a node starts" in text
        assert await _history(js_cluster, "destination-hook_new.toml") == []

        c = await stack.enter_async_context(_node(paths["c"], "c"))
        assert not theirs.exists()
        assert await _ingest_status(http, c, HAND_KEY) == 200
        assert await _ingest_status(http, c, key) == 401

        status, _ = await _post(on_a, a, SHOP + "/enabled", csrf_a, enabled="false")
        assert status == 303
        await until(lambda: _applied_on(c, a))
        assert not theirs.exists()
        assert await _ingest_status(http, c, HAND_KEY) == 200
        assert await _ingest_status(http, a, key) == 403


LATE_KEY = "latekey000000000000000000000000a"


async def test_a_node_whose_follow_lost_its_consumer_reads_the_bucket_again(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink, http: aiohttp.ClientSession
) -> None:
    """The server holding a's follow (an in-memory consumer of one replica) dies; a change
    stored meanwhile reaches a once its follow has started again from a read of the bucket."""
    path = _config_path(tmp_path, js_cluster, sink.url, "a")
    async with _node(path, "a") as a:
        client = await nats.connect(js_cluster.urls)
        try:
            js = client.jetstream()
            stream = f"KV_{Layout().confd_bucket}"
            (follow,) = await js.consumers_info(stream)
            assert follow.cluster is not None
            assert follow.cluster.leader is not None
            js_cluster.kill(int(follow.cluster.leader.removeprefix("n")))
            late = f'[[sources]]\nname = "late"\ntype = "server"\nwrite_key = "{LATE_KEY}"\n'
            await until(lambda: _stored(js, "source-late.toml", late))
        finally:
            await client.close()
        await until(lambda: _status_is(http, a, LATE_KEY, 200))
        assert owned(path.parent / "conf.d" / "source-late.toml")


async def _stored(js: Any, key: str, text: str) -> bool:
    """Whether the put went through (the cluster may be electing leaders just now)."""
    try:
        bucket = await js.key_value(Layout().confd_bucket)
        await bucket.put(key, text.encode())
    except (nats.errors.Error, TimeoutError):
        return False
    return True
