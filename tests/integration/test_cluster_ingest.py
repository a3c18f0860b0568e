"""Ingest on the JetStream backend: a real node on a real three-server cluster, real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd.cluster.ingest import JetStreamAppender
from cdpd.cluster.layout import Layout
from cdpd.cluster.node import running_node
from cdpd.cluster.publish import Publisher
from cdpd.model.rows import OutboxRow
from tests.cluster_support import aux_records, jetstream_config, jetstream_text, stored_rows
from tests.helpers import WRITE_KEY, basic_auth
from tests.jetstream_cluster import JetStreamCluster

AUTH = {"Authorization": basic_auth(WRITE_KEY)}
ADMIN_TOKEN = "admin-secret-token"
IDENTITY = '[identity]\nspace = "main"\naccess_tokens = ["t"]\n'


def _config(tmp_path: Path, cluster: JetStreamCluster, **keys: str):  # type: ignore[no-untyped-def]
    text = jetstream_text(
        tmp_path / "var",
        cluster.urls,
        f'[admin]\ntoken = "{ADMIN_TOKEN}"\n',
        jetstream=keys.get("jetstream", ""),
    )
    return jetstream_config(tmp_path / "cdpd.toml", text)


def _track(message_id: str, user: str = "u1") -> dict[str, object]:
    return {"type": "track", "event": "Signed Up", "userId": user, "messageId": message_id}


async def test_a_batch_is_in_the_stream_when_it_is_answered(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with running_node(_config(tmp_path, js_cluster)) as node:
        batch = [
            _track("m-1"),
            _track("m-2", "zoë 100%"),
            {"type": "track", "messageId": "no-event"},
        ]
        async with http.post(f"{node.url}/v1/batch", json={"batch": batch}, headers=AUTH) as r:
            assert r.status == 200, await r.text()
        rows = await stored_rows(js_cluster.urls)
        assert sorted(row.message_id for row in rows) == ["m-1", "m-2"]
        assert {row.source for row in rows} == {"website"}
        assert {row.user_id for row in rows} == {"u1", "zoë 100%"}  # headers percent-encoded
        assert {row.event for row in rows} == {"Signed Up"}
        assert msgspec.json.decode(rows[0].payload)["messageId"] in {"m-1", "m-2"}
        rejects = await aux_records(js_cluster.urls, "rejects")
        assert [reject["message_id"] for reject in rejects] == ["no-event"]
        assert node.ingest.accepted == 2


async def test_a_message_id_is_stored_once_and_counted_as_a_duplicate_after(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with running_node(_config(tmp_path, js_cluster)) as node:
        batch = [_track("same"), _track("same")]
        for _ in range(2):
            async with http.post(f"{node.url}/v1/batch", json={"batch": batch}, headers=AUTH) as r:
                assert r.status == 200
        rows = await stored_rows(js_cluster.urls)
        assert [row.message_id for row in rows] == ["same"]
        assert (node.ingest.accepted, node.ingest.duplicates) == (1, 3)


async def test_beyond_jetstreams_window_the_dedup_markers_decide(
    tmp_path: Path, js_cluster: JetStreamCluster
) -> None:
    async with running_node(_config(tmp_path, js_cluster)) as node:
        publisher = Publisher(node.client)
        await publisher.start()
        layout = Layout()
        appender = JetStreamAppender(node.client, publisher, layout, dedup_window_s=3600)
        js = node.client.jetstream()

        def row(message_id: str) -> OutboxRow:
            return OutboxRow(message_id, "website", "track", "E", "u1", None, "2026-01-01", "{}")

        # A stored message leaves a marker behind it ...
        assert (await appender.append([row("first")], [], 0)).stored == 1
        marker = await js.get_last_msg(layout.dedup_stream, layout.dedup_subject("website:first"))
        assert marker.seq
        # ... and a marker alone makes a message a duplicate (as it does once JetStream's own
        # Nats-Msg-Id window has passed): nothing is published.
        await js.publish(layout.dedup_subject("website:marked"), b"")
        again = await appender.append([row("marked"), row("first")], [], 0)
        assert (again.stored, again.duplicates) == (0, 2)
        assert [r.message_id for r in await stored_rows(js_cluster.urls)] == ["first"]


async def test_without_quorum_a_request_is_answered_503_with_retry_after(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    config = _config(tmp_path, js_cluster, jetstream="ack_timeout_s = 1.0\n")
    async with running_node(config) as node:
        js_cluster.stop(1)
        js_cluster.stop(2)
        async with http.post(f"{node.url}/v1/track", json=_track("q-1"), headers=AUTH) as r:
            assert r.status == 503
            assert r.headers["Retry-After"].isdigit()
            body = await r.json()
            assert body["code"] in {"cluster_unavailable", "cluster_unreachable"}
        js_cluster.start(1)
        js_cluster.start(2)
        await js_cluster.ready()
        status = 0
        for _ in range(300):  # until the stream has elected a leader again
            async with http.post(f"{node.url}/v1/track", json=_track("q-1"), headers=AUTH) as r:
                status = r.status
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
        assert [row.message_id for row in await stored_rows(js_cluster.urls)] == ["q-1"]


async def test_the_admin_api_shows_the_streams_and_health_is_ok(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with running_node(_config(tmp_path, js_cluster)) as node:
        async with http.post(f"{node.url}/v1/track", json=_track("a-1"), headers=AUTH) as r:
            assert r.status == 200
        async with http.get(f"{node.url}/admin/cluster") as r:
            assert r.status == 401
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(f"{node.url}/admin/cluster", headers=bearer) as r:
            streams = {s["name"]: s for s in (await r.json())["streams"]}
        assert streams["CDPD"]["messages"] == 1
        assert streams["CDPD"]["replicas"] == 3
        async with http.get(f"{node.url}/health") as r:
            assert (r.status, (await r.json())["status"]) == (200, "ok")
        async with http.get(f"{node.url}/metrics") as r:
            text = await r.text()
        assert 'cdpd_cluster_stream_messages{stream="CDPD"} 1.0' in text
        assert 'cdpd_ingest_messages_total{outcome="accepted"} 1.0' in text


async def test_check_config_reaches_the_cluster_and_refuses_what_a_node_cannot_serve(
    tmp_path: Path, js_cluster: JetStreamCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cdpd.toml"
    path.write_text(jetstream_text(tmp_path / "var", js_cluster.urls))
    assert await asyncio.to_thread(cli.main, ["check-config", "--config", str(path)]) == 0
    assert "JetStream stream CDPD" in capsys.readouterr().out
    async with running_node(_config(tmp_path, js_cluster)):  # creates the streams
        pass
    capsys.readouterr()  # the node's log lines
    stats = ["cluster", "stats", "--json", "--config", str(path)]
    assert await asyncio.to_thread(cli.main, stats) == 0
    found = msgspec.json.decode(capsys.readouterr().out)
    assert {s["name"] for s in found["streams"]} >= {"CDPD", "CDPD_AUX", "CDPD_DEDUP"}
    path.write_text(jetstream_text(tmp_path / "var", js_cluster.urls, IDENTITY))
    assert await asyncio.to_thread(cli.main, ["check-config", "--config", str(path)]) == 0
    assert "node holding the profiles lease" in capsys.readouterr().err  # a note, not a refusal
    no_dedup = jetstream_text(
        tmp_path / "var", js_cluster.urls, IDENTITY, storage="dedup_window_s = 0\n"
    )
    path.write_text(no_dedup)
    assert await asyncio.to_thread(cli.main, ["check-config", "--config", str(path)]) == 2
    assert "snapshot_interval_s" in capsys.readouterr().err
    path.write_text(jetstream_text(tmp_path / "var", ["nats://127.0.0.1:9"]))
    assert await asyncio.to_thread(cli.main, ["check-config", "--config", str(path)]) == 1
    assert "cannot connect to JetStream at nats://127.0.0.1:9" in capsys.readouterr().err
