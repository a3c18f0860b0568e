"""The console's counts per interval on the JetStream backend: two real nodes on a real
three-server cluster each count what their ingest stored and their lanes did, and either
node's source page and Delivery Overview show the sum for the window, as the SQLite backend's
pages do."""

from __future__ import annotations

import asyncio
import functools
import re
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdpd.cluster.node import Node, running_node
from cdpd.config import Config
from tests.cluster_support import jetstream_config, jetstream_text
from tests.console_support import add_cluster_person, signed_in, workspaces_toml
from tests.helpers import WRITE_KEY, basic_auth
from tests.integration.test_cluster_delivery import until
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink, status

PAGE = "/console/w/acme/destinations/hook_a"
SOURCE = "/console/w/acme/sources/website"
COUNTED = ("received", "filtered_at_destination", "retried", "failed", "delivered")


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink() as running:
        yield running


def _config(tmp_path: Path, cluster: JetStreamCluster, sink: Sink, node: str) -> Config:
    """The console's two workspaces; hook_a leaves out the event `Ignored`."""
    extra = workspaces_toml(sink.url).replace(
        'sources = ["website"]\n', 'sources = ["website"]\nexclude_events = ["Ignored"]\n', 1
    )
    text = jetstream_text(tmp_path / node, cluster.urls, extra)
    return jetstream_config(tmp_path / f"{node}.toml", text)


@asynccontextmanager
async def _node(
    tmp_path: Path, cluster: JetStreamCluster, sink: Sink, name: str
) -> AsyncIterator[Node]:
    async with running_node(_config(tmp_path, cluster, sink, name), node_name=name) as node:
        yield node


def _track(message_id: str, event: str = "Order Completed") -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": "u1", "messageId": message_id}


async def _send(http: aiohttp.ClientSession, node: Node, messages: list[dict[str, Any]]) -> None:
    async with http.post(
        node.url + "/v1/batch",
        json={"batch": messages},
        headers={"Authorization": basic_auth(WRITE_KEY)},
    ) as resp:
        assert resp.status == 200, await resp.text()


def _answered(sink: Sink, wanted: set[str]) -> bool:
    return wanted <= {m["messageId"] for r in sink.received for m in r.messages}


async def _counts(client: aiohttp.ClientSession, path: str) -> dict[str, str]:
    async with client.get(path) as resp:
        assert resp.status == 200
        text = await resp.text()
    found = dict(re.findall(r'data-count="(\w+)">([^<]*)<', text))
    found["p95"] = re.search(r"<strong data-p95>([^<]*)<", text).group(1)  # type: ignore[union-attr]
    found["filters"] = "".join(re.findall(r'data-filtered="filters">(\d+)<', text))
    found["charted"] = str('data-series="delivered,retried,failed"' in text)
    return found


async def _until_shown(
    client: aiohttp.ClientSession, path: str, wanted: dict[str, str], timeout_s: float = 60
) -> dict[str, str]:
    """The page's counts once they are `wanted` (polled: written every few seconds); the last
    ones seen in the failure otherwise."""
    found: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                found = await _counts(client, path)
                if all(found.get(key) == value for key, value in wanted.items()):
                    return found
                await asyncio.sleep(0.2)
    except TimeoutError:
        pass
    raise AssertionError(f"{path} shows {found}, not {wanted}")


async def test_either_nodes_pages_show_every_nodes_counts_summed(
    tmp_path: Path, js_cluster: JetStreamCluster, sink: Sink, http: aiohttp.ClientSession
) -> None:
    sink.by_message = {"bad-a": deque([status(400)]), "bad-b": deque([status(400)])}
    # A alone delivers the first messages (a 4xx gives up at once: failed) and writes its last
    # counts as it stops; then B alone the next; then both serve the pages.
    async with _node(tmp_path, js_cluster, sink, "a") as a:
        await add_cluster_person(a.config, "ada", {"acme": "member"})
        await _send(http, a, [_track("ok-a1"), _track("ok-a2"), _track("bad-a")])
        await _send(http, a, [_track("skip-a", "Ignored")])
        await until(lambda: _true(_answered(sink, {"ok-a1", "ok-a2", "bad-a"})))
    async with _node(tmp_path, js_cluster, sink, "b") as b:
        await _send(http, b, [_track("ok-b1"), _track("bad-b"), _track("skip-b", "Ignored")])
        await until(lambda: _true(_answered(sink, {"ok-b1", "bad-b"})))
        async with _node(tmp_path, js_cluster, sink, "a") as a:
            wanted = {
                "received": "7",
                "filtered_at_destination": "2",
                "filters": "2",
                "delivered": "3",
                "failed": "2",
                "retried": "0",
                "charted": "True",
            }
            for node in (a, b):
                async with signed_in(node.url, "ada") as (client, _):
                    for window in ("10m", "24h"):  # the per-minute and the per-hour records
                        path = f"{PAGE}?window={window}"
                        shown = await _until_shown(client, path, wanted)
                        assert shown["p95"].startswith("≤ ")
                        # The source's page: what each node's ingest stored, by type.
                        source = f"{SOURCE}?window={window}"
                        await until(functools.partial(_received_tracks, client, source, "7"))


async def _received_tracks(client: aiohttp.ClientSession, path: str, wanted: str) -> bool:
    async with client.get(path) as resp:
        text = await resp.text()
    return f'<td>track</td><td class="num">{wanted}</td>' in text and "data-chart" in text


async def _true(value: bool) -> bool:
    return value
