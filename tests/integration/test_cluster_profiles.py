"""Identity resolution and Engage on the JetStream backend (real cluster, real HTTP, real
SQLite files): the lease holder resolves the stream and sends audience entries through the
stream; a snapshot in the cluster's object store carries its state to the next holder."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import pytest
from structlog.testing import capture_logs

from cdpd import cli
from cdpd.cluster import snapshot_archive, snapshots
from cdpd.cluster.layout import Layout
from cdpd.cluster.node import Node, running_node
from cdpd.cluster.profile_commands import DONE, FORGET, ProfileCommands
from cdpd.cluster.profiles import LEASE_KEY, ProfilesLeader
from cdpd.config import Config
from cdpd.identity.profiles_sync import SCHEMA
from tests.cluster_support import (
    empty_postgres_warehouse,
    jetstream_config,
    jetstream_text,
    profiles_toml,
    stored_rows,
)
from tests.helpers import WRITE_KEY, WarehouseProbe, basic_auth
from tests.jetstream_cluster import JetStreamCluster
from tests.regulations import ADMIN, regulate, settled
from tests.regulations import AUTH as AUTH_ADMIN
from tests.sink import Sink

AUTH = {"Authorization": basic_auth(WRITE_KEY)}


BUYERS = {"buyers": "event('Order').count() >= 2"}


def _configs(
    tmp_path: Path, js_cluster: JetStreamCluster, extra: str, snapshot_interval_s: float = 0.5
) -> Callable[[str], Config]:
    """The config of the node named `name` (its own data folder), all on one cluster."""

    def config(name: str) -> Config:
        jetstream = f"snapshot_interval_s = {snapshot_interval_s}\n"
        text = jetstream_text(tmp_path / name, js_cluster.urls, extra, jetstream=jetstream)
        return jetstream_config(tmp_path / f"{name}.toml", text)

    return config


def _leader(node: Node) -> ProfilesLeader:
    leader = node.stages["profiles"]
    assert isinstance(leader, ProfilesLeader)
    return leader


async def _send(http: aiohttp.ClientSession, node: Node, batch: list[dict[str, Any]]) -> None:
    async with http.post(f"{node.url}/v1/batch", json={"batch": batch}, headers=AUTH) as r:
        assert r.status == 200, await r.text()


def _orders(user: str, prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {"type": "track", "event": "Order", "userId": user, "messageId": f"{prefix}-{n}"}
        for n in range(count)
    ]


def _entered(sink: Sink) -> list[dict[str, Any]]:
    return [m for m in sink.messages if m.get("event") == "Audience Entered"]


async def _until(predicate: Any, timeout_s: float = 60.0) -> None:
    for _ in range(round(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def _snapshot_names(urls: list[str]) -> list[snapshots.SnapshotName]:
    client = await nats.connect(urls)
    try:
        store = await client.jetstream().object_store(Layout().state_bucket)
        return await snapshots.names(store)
    finally:
        await client.close()


async def test_the_holder_resolves_sends_through_the_stream_and_the_next_holder_restores(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        config = _configs(
            tmp_path, js_cluster, profiles_toml(sink.url, BUYERS), snapshot_interval_s=1.0
        )
        async with running_node(config("a"), node_name="a") as a:
            await _send(http, a, [{"type": "identify", "userId": "u1", "anonymousId": "x1"}])
            await _send(http, a, _orders("u1", "a", 2))
            await _until(lambda: len(_entered(sink)) == 1)
            identity = _leader(a).identity
            assert identity is not None
            assert identity.committed_seq >= 3
            assert sum(identity.profile_counts().values()) == 1
        # a released the lease after a last snapshot; b restores it and goes on from there
        names = await _snapshot_names(js_cluster.urls)
        assert names
        assert names[-1].position >= 4  # the identify, two orders, Engage's messages
        async with running_node(config("b"), node_name="b") as b:
            await _until(lambda: _leader(b).identity is not None)
            await _send(http, b, _orders("u2", "b", 2))
            await _until(lambda: len(_entered(sink)) == 2)
            identity = _leader(b).identity
            assert identity is not None
            assert sum(identity.profile_counts().values()) == 2  # u1 came from the snapshot
            await asyncio.sleep(1.5)
    assert sorted(m["userId"] for m in _entered(sink)) == ["u1", "u2"]  # each entry once
    engage_ids = [
        r.message_id for r in await stored_rows(js_cluster.urls) if r.source == "engage_main"
    ]
    assert len(engage_ids) == 4  # an Identify and a Track per entry, in the stream once each
    assert len(set(engage_ids)) == 4


PROFILE_AUTH = {"Authorization": "Basic " + base64.b64encode(b"tok:").decode()}


async def _profile_api(
    http: aiohttp.ClientSession, node: Node, resource: str, query: str = ""
) -> tuple[int, Any]:
    url = f"{node.url}/v1/spaces/main/collections/users/profiles/user_id:u1/{resource}{query}"
    async with http.get(url, headers=PROFILE_AUTH) as response:
        return response.status, await response.json()


async def test_the_profile_api_and_the_cli_answer_on_every_node(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with Sink() as sink:
        config = _configs(tmp_path, js_cluster, profiles_toml(sink.url, BUYERS))
        async with running_node(config("a"), node_name="a") as a:
            await _until(lambda: _leader(a).identity is not None)
            async with running_node(config("b"), node_name="b") as b:
                status, _ = await _profile_api(http, b, "traits")
                assert status == 404  # nothing resolved anywhere yet
                identify = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
                await _send(http, b, [identify, *_orders("u1", "b", 2)])
                await _until(lambda: len(_entered(sink)) == 1)
                status, traits = await _traits(http, a)
                # Engage's Identify (`buyers`), in the stream once the entry is sent, may be
                # resolved by now too: only the identify's own trait is certain.
                assert (status, traits["plan"]) == (200, "pro")
                for _ in range(200):  # the next snapshot, then b's next poll
                    status, body = await _profile_api(http, b, "traits", "?class=audience")
                    if status == 200 and body["traits"]:
                        break
                    await asyncio.sleep(0.1)
                assert (status, body["traits"]) == (200, {"buyers": True})
                status, traits = await _traits(http, b)
                assert status == 200
                assert traits["plan"] == "pro"  # (and Engage's Identify gave it `buyers`)
                status, body = await _profile_api(http, b, "external_ids")
                assert status == 200
                assert {e["type"] for e in body["data"]} == {"user_id"}
                status, message = await _delete_user_id(http, b)
                assert status == 400
                assert "holding the profiles lease" in message
    # `cdpd profiles show` reads the newest snapshot from the cluster
    argv = ["profiles", "show", "user_id:u1", "--json", "--config", str(tmp_path / "b.toml")]
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, argv) == 0
    shown = msgspec.json.decode(capsys.readouterr().out)
    assert {(i["type"], i["id"]) for i in shown["identifiers"]} == {("user_id", "u1")}


async def _delete_user_id(http: aiohttp.ClientSession, node: Node) -> tuple[int, str]:
    url = f"{node.url}/v1/spaces/main/collections/users/profiles/user_id:u1/external_ids/delete"
    deletion = {"delete_external_ids": [{"id": "u1", "type": "user_id"}]}
    async with http.post(url, json=deletion, headers=PROFILE_AUTH) as response:
        return response.status, (await response.json())["error"]["message"]


async def _traits(http: aiohttp.ClientSession, node: Node) -> tuple[int, Any]:
    status, body = await _profile_api(http, node, "traits")
    return status, body.get("traits")


async def _synced_users(warehouse: WarehouseProbe, wanted: set[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(300):
        with contextlib.suppress(Exception):  # the tables appear with the first sync
            rows = await warehouse.rows(
                SCHEMA, "user_identifiers", "canonical_segment_id, type, external_id_value"
            )
        if wanted <= {r["external_id_value"] for r in rows if r["type"] == "user_id"}:
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"Profiles Sync did not bring {wanted}: {rows}")


async def test_profiles_sync_runs_on_the_holder_and_goes_on_after_a_takeover(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    postgres_test_dsn: str,
    http: aiohttp.ClientSession,
) -> None:
    warehouse = await empty_postgres_warehouse(postgres_test_dsn)

    merge = [
        {"type": "page", "anonymousId": "phone-1", "messageId": "p1"},
        {"type": "identify", "anonymousId": "phone-1", "userId": "u1", "messageId": "i1"},
    ]
    async with Sink() as sink:
        config = _configs(tmp_path, js_cluster, profiles_toml(sink.url, BUYERS) + warehouse.toml)
        async with running_node(config("a"), node_name="a") as a:
            await _send(http, a, merge)
            await _synced_users(warehouse, {"u1"})
        async with running_node(config("b"), node_name="b") as b:
            await _send(http, b, [{"type": "identify", "userId": "u2", "messageId": "i2"}])
            rows = await _synced_users(warehouse, {"u1", "u2"})
    identifiers = sorted((r["type"], r["external_id_value"]) for r in rows)
    assert identifiers == [("anonymous_id", "phone-1"), ("user_id", "u1"), ("user_id", "u2")]
    graph = await warehouse.rows(SCHEMA, "id_graph_updates", "segment_id, canonical_segment_id")
    assert len(graph) == 2  # two profiles created, each once across both holders


async def test_a_holder_that_loses_the_lease_stops_and_restores_when_it_holds_it_again(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    with capture_logs() as logs:
        async with Sink() as sink:
            config = _configs(tmp_path, js_cluster, profiles_toml(sink.url, BUYERS))
            async with running_node(config("a"), node_name="a") as a:
                await _until(lambda: _leader(a).identity is not None)
                await _send(http, a, _orders("u1", "a", 2))
                await _until(lambda: len(_entered(sink)) == 1)
                await _snapshot_at(js_cluster.urls, _leader(a).identity.committed_seq)
                client = await nats.connect(js_cluster.urls)
                try:  # as if another node had taken it over
                    kv = await client.jetstream().key_value(Layout().leases_bucket)
                    await kv.purge(LEASE_KEY)
                finally:
                    await client.close()
                await _until(lambda: any(e["event"] == "lease_lost" for e in logs))
                await _until(lambda: len(_restored(logs)) == 2 and _leader(a).identity is not None)
                assert _restored(logs)[1]["position"] >= 2  # from its own last snapshot
                await _send(http, a, _orders("u2", "a2", 2))
                await _until(lambda: len(_entered(sink)) == 2)
    assert sorted(m["userId"] for m in _entered(sink)) == ["u1", "u2"]


async def _snapshot_at(urls: list[str], position: int) -> None:
    for _ in range(200):
        names = await _snapshot_names(urls)
        if names and names[-1].position >= position:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no snapshot at {position}")


def _restored(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "profiles_restored"]


GONE_USER = "erase-me-7"


async def _profile_status(http: aiohttp.ClientSession, node: Node, identifier: str) -> int:
    url = f"{node.url}/v1/spaces/main/collections/users/profiles/{identifier}/traits"
    async with http.get(url, headers=PROFILE_AUTH) as response:
        return response.status


async def _until_profile(
    http: aiohttp.ClientSession, node: Node, identifier: str, status: int
) -> None:
    """Until `node` answers `status` for the profile; a follower reads the newest snapshot at
    each try (what its poll does every READ_POLL_S)."""
    profiles = _leader(node).profiles
    for _ in range(200):
        if profiles.live is None:
            await profiles.refresh()
        if await _profile_status(http, node, identifier) == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{identifier} on {node.url} never answered {status}")


async def _unmerge(http: aiohttp.ClientSession, node: Node, identifier: str) -> tuple[int, Any]:
    async with http.post(
        f"{node.url}/admin/profiles/unmerge", json={"identifier": identifier}, headers=AUTH_ADMIN
    ) as response:
        return response.status, await response.json()


async def _snapshot_files(urls: list[str], folder: Path) -> dict[str, list[bytes]]:
    """Every snapshot in the object store, by name: the bytes of each file in it."""
    client = await nats.connect(urls)
    found: dict[str, list[bytes]] = {}
    try:
        store = await client.jetstream().object_store(Layout().state_bucket)
        for name in await snapshots.names(store):
            archive_path = folder / f"{name.object}.tar.zst"
            await snapshots.download(store, name, archive_path)
            assert snapshot_archive.is_compressed(archive_path)
            unpacked = folder / name.object
            snapshot_archive.extract(archive_path, unpacked)
            found[name.object] = [path.read_bytes() for path in sorted(unpacked.iterdir())]
    finally:
        await client.close()
    return found


async def test_a_regulation_and_an_unmerge_asked_of_a_follower_are_carried_out_by_the_holder(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        config = _configs(tmp_path, js_cluster, ADMIN + profiles_toml(sink.url, BUYERS))
        async with running_node(config("a"), node_name="a") as a:
            await _until(lambda: _leader(a).identity is not None)
            async with running_node(config("b"), node_name="b") as b:
                identify = {"type": "identify", "userId": GONE_USER, "traits": {"plan": "pro"}}
                merged = [
                    {"type": "identify", "userId": "kept", "anonymousId": "anon-1",
                     "messageId": "i0"},
                    {"type": "screen", "anonymousId": "phone-1", "name": "Home", "messageId": "s1"},
                    {"type": "identify", "anonymousId": "phone-1", "userId": "kept",
                     "messageId": "i1"},
                ]  # fmt: skip
                await _send(http, b, [identify, *_orders(GONE_USER, "g", 2), *merged])
                await _until(lambda: len(_entered(sink)) == 1)  # Engage holds the user too
                await _until_profile(http, b, f"user_id:{GONE_USER}", 200)
                before = await _snapshot_files(js_cluster.urls, tmp_path)
                assert any(GONE_USER.encode() in f for files in before.values() for f in files)

                status, answer = await _unmerge(http, b, "anonymous_id:phone-1")
                assert status == 200, answer
                assert answer["identifier"] == "anonymous_id:phone-1"
                assert len(answer["profiles"]) == 2
                graph = _leader(a).identity.graph  # type: ignore[union-attr]
                phone = graph.owner("users", ("anonymous_id", "phone-1"))
                assert phone != graph.owner("users", ("user_id", "kept"))
                status, answer = await _unmerge(http, b, "anonymous_id:nobody")
                assert (status, answer["code"]) == (409, "cannot_unmerge")
                status, _ = await _unmerge(http, b, "no-colon")
                assert status == 400

                regulation_id = await regulate(http, b, "DELETE_INTERNAL", GONE_USER)
                done = await settled(http, b, regulation_id, timeout_s=30)
                targets = {t["target"]: t["status"] for t in done["targets"]}
                assert targets == {"outbox": "FINISHED", "identity": "FINISHED"}, done
                assert done["overallStatus"] == "FINISHED"
                await _until_profile(http, a, f"user_id:{GONE_USER}", 404)
                await _until_profile(http, b, f"user_id:{GONE_USER}", 404)
                after = await _snapshot_files(js_cluster.urls, tmp_path)
                assert after
                for name, files in after.items():
                    assert not any(GONE_USER.encode() in f for f in files), name
                assert _leader(a).commands.carried_out == 3  # type: ignore[union-attr]
        # No node holds the lease: a command asked now is carried out by the next holder,
        # which restores the newest snapshot (without the user, the unmerge in it).
        client = await nats.connect(js_cluster.urls)
        try:
            commands = ProfileCommands(client.jetstream(), Layout())
            asked = asyncio.create_task(commands.ask(FORGET, 30.0, users=["kept"]))
            await _until_commands(client, 4)
            async with running_node(config("b"), node_name="b") as b:
                outcome = await asked
                assert (outcome.state, outcome.rows > 0) == (DONE, True), outcome
                identity = _leader(b).identity
                assert identity is not None
                assert identity.graph.owner("users", ("user_id", GONE_USER)) is None
                assert identity.graph.owner("users", ("anonymous_id", "anon-1")) is None
                assert identity.graph.owner("users", ("anonymous_id", "phone-1")) is not None
        finally:
            await client.close()


async def _until_commands(client: nats.NATS, count: int) -> None:
    for _ in range(200):
        info = await client.jetstream().stream_info(Layout().commands_stream)
        if info.state.last_seq >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} commands in the stream")
