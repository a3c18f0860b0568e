"""A regulation's `file:<name>` target on the JetStream backend: every node erases the users'
lines from its own file, a node that is down erases when it starts again and the target waits
for it, a node gone for good is not waited for (and the target says so), and a suppressing
regulation leaves no line of the user written after it, and a source's regulation erases only
that source's lines (a real three-server cluster, two cdpd
nodes each writing its own file, real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
from structlog.testing import capture_logs

from cdpd.cluster.file_erasure import FileErasure
from cdpd.cluster.file_writers import FileWriter, writer_key
from cdpd.cluster.layout import Layout
from cdpd.cluster.node import Node, running_node
from cdpd.config import Config
from cdpd.model.timestamps import now_ms
from tests.helpers import basic_auth
from tests.integration.test_cluster_regulations import node_config, send
from tests.integration.test_regulations import GONE, KEPT, track
from tests.jetstream_cluster import JetStreamCluster
from tests.regulations import regulate, regulation, settled

DAY_MS = 24 * 3600 * 1000
LEFT_FOR_GOOD = "0badc0ffee0f0000"  # a node id no running node has


def archive(path: Path) -> str:
    return f'[[destinations]]\nname = "archive"\ntype = "file"\npath = "{path}"\n'


def users_in(path: Path) -> list[str]:
    """The userId of each line of the file, sorted."""
    if not path.exists():
        return []
    return sorted(json.loads(line)["userId"] for line in path.read_text().splitlines() if line)


async def until(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            found = check()
            if found if isinstance(found, bool) else await found:
                return
            await asyncio.sleep(0.05)


def erasure_of(node: Node) -> FileErasure:
    found = node.stages["file_erasure"]
    assert isinstance(found, FileErasure)
    return found


def file_target(found: dict[str, Any]) -> dict[str, Any]:
    (target,) = [t for t in found["targets"] if t["target"] == "file:archive"]
    return target


async def a_writer_that_left(servers: list[str], node_id: str = LEFT_FOR_GOOD) -> None:
    """A node that wrote the file and was last seen eight days ago (`node_gone_s` is 7)."""
    client = await nats.connect(servers=servers)
    try:
        positions = await client.jetstream().key_value(Layout().positions_bucket)
        gone = FileWriter(
            node_id=node_id,
            node="old-host:1",
            destinations=["archive"],
            seen_at_ms=now_ms() - 8 * DAY_MS,
        )
        await positions.put(writer_key(node_id), msgspec.json.encode(gone))
    finally:
        await client.close()


def configs(tmp_path: Path, cluster: JetStreamCluster) -> tuple[dict[str, Config], dict[str, Path]]:
    paths = {name: tmp_path / f"{name}-files" / "events.ndjson" for name in "ab"}
    found = {name: node_config(tmp_path, cluster, name, archive(paths[name])) for name in "ab"}
    return found, paths


async def test_every_node_erases_its_file_and_the_target_waits_for_a_node_that_is_down(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    config, paths = configs(tmp_path, js_cluster)
    async with running_node(config["a"], node_name="a") as a:
        await send(http, a, [track("a-1", GONE), track("a-2", KEPT)])
        await until(lambda: users_in(paths["a"]) == [GONE, KEPT])
        a_id = erasure_of(a).node_id
    await a_writer_that_left(js_cluster.urls)
    async with running_node(config["b"], node_name="b") as b:
        b_id = erasure_of(b).node_id
        assert b_id != a_id
        await send(http, b, [track("b-1", GONE), track("b-2", KEPT), track("b-3", GONE)])
        await until(lambda: users_in(paths["b"]) == [GONE, GONE, KEPT])
        regulation_id = await regulate(http, b, "DELETE_INTERNAL", GONE)

        async def waits_for_a_only() -> bool:
            target = file_target(await regulation(http, b, regulation_id))
            waiting = target["lastError"] or ""
            return target["status"] == "RUNNING" and a_id in waiting and b_id not in waiting

        await until(waits_for_a_only)
        assert users_in(paths["b"]) == [KEPT]  # b erased its own
        assert users_in(paths["a"]) == [GONE, KEPT]  # a is down
        assert (
            LEFT_FOR_GOOD not in file_target(await regulation(http, b, regulation_id))["lastError"]
        )
        async with running_node(config["a"], node_name="a"):
            assert users_in(paths["a"]) == [KEPT]  # erased before it serves
            found = await settled(http, b, regulation_id)
    assert found["overallStatus"] == "FINISHED", found
    target = file_target(found)
    assert (target["status"], target["rowsRemoved"]) == ("FINISHED", 3)
    assert "not erased by 1 node(s)" in target["lastError"]
    assert LEFT_FOR_GOOD in target["lastError"]
    assert a_id not in target["lastError"]
    assert users_in(paths["a"]) == users_in(paths["b"]) == [KEPT]


@contextlib.asynccontextmanager
async def both(config: dict[str, Config]) -> AsyncIterator[tuple[Node, Node]]:
    async with (
        running_node(config["a"], node_name="a") as a,
        running_node(config["b"], node_name="b") as b,
    ):
        yield a, b


async def test_no_file_holds_the_user_after_a_suppression_and_a_source_scope_holds(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    config, paths = configs(tmp_path, js_cluster)

    def lines() -> list[str]:
        return sorted(users_in(paths["a"]) + users_in(paths["b"]))

    async with both(config) as (a, b):
        await send(
            http, a, [track(f"s-{n}-{user}", user) for n in range(4) for user in (GONE, KEPT)]
        )
        await until(lambda: lines() == [GONE] * 4 + [KEPT] * 4)
        regulation_id = await regulate(http, a, "SUPPRESS_WITH_DELETE_INTERNAL", GONE)
        # b may take these before its suppression is in force: stored, then erased with the rest
        await send(http, b, [track("t-1", GONE), track("t-2", KEPT)])
        found = await settled(http, b, regulation_id)
        assert found["overallStatus"] == "FINISHED", found
        assert file_target(found)["lastError"] is None  # no node gone
        await send(http, b, [track("u-1", GONE), track("u-2", KEPT)])
        await send(http, a, [track("u-3", GONE), track("u-4", KEPT)])
        await until(lambda: lines() == [KEPT] * 7)
        assert file_target(found)["rowsRemoved"] >= 4

        # A source's regulation erases the lines of that source's messages only.
        shop = {"Authorization": basic_auth("wk_shop")}
        batch = {"batch": [track(f"shop-{n}", KEPT) for n in range(3)]}
        async with http.post(f"{b.url}/v1/batch", json=batch, headers=shop) as response:
            assert response.status == 200
        await until(lambda: lines() == [KEPT] * 10)
        scoped = await settled(
            http, a, await regulate(http, a, "DELETE_INTERNAL", KEPT, source="shop")
        )
        assert scoped["overallStatus"] == "FINISHED", scoped
        assert file_target(scoped)["rowsRemoved"] == 3
        assert lines() == [KEPT] * 7
        assert not any("shop-" in (paths[n].read_text() if paths[n].exists() else "") for n in "ab")


async def test_a_node_back_after_node_gone_s_was_not_waited_for_and_erases_on_its_return(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    config, paths = configs(tmp_path, js_cluster)
    async with running_node(config["a"], node_name="a") as a:
        await send(http, a, [track("a-1", GONE), track("a-2", KEPT)])
        await until(lambda: users_in(paths["a"]) == [GONE, KEPT])
        a_id = erasure_of(a).node_id
    await a_writer_that_left(js_cluster.urls, a_id)  # as if a had been away for eight days
    async with running_node(config["b"], node_name="b") as b:
        found = await settled(http, b, await regulate(http, b, "DELETE_INTERNAL", GONE))
        assert found["overallStatus"] == "FINISHED", found
        target = file_target(found)
        assert target["rowsRemoved"] == 0
        assert a_id in target["lastError"]
        assert "unseen for more than node_gone_s" in target["lastError"]
        assert users_in(paths["a"]) == [GONE, KEPT]
    with capture_logs() as logs:
        async with running_node(config["a"], node_name="a"):
            assert users_in(paths["a"]) == [KEPT]
    assert [e["regulation"] for e in logs if e["event"] == "file_erased_late"] == [found["id"]]
