"""The JetStream backend's streams and buckets on a real three-server cluster."""

from __future__ import annotations

import msgspec
import pytest

from cdpd.cluster import connect
from cdpd.cluster.layout import Layout, headers_of, row_of
from cdpd.config import JetStreamConfig
from cdpd.model.rows import OutboxRow
from tests.jetstream_cluster import JetStreamCluster


def _config(cluster: JetStreamCluster, **extra: object) -> JetStreamConfig:
    return msgspec.convert({"servers": cluster.urls, **extra}, JetStreamConfig)


async def test_streams_are_created_replicated_and_checked(js_cluster: JetStreamCluster) -> None:
    config = _config(js_cluster)
    layout = Layout.of(config)
    async with connect.connected(config) as client:
        js = client.jetstream()
        await connect.ensure(js, config, layout)
        info = await js.stream_info(layout.stream)
        assert info.config.num_replicas == 3
        assert info.config.subjects == ["cdpd.msg.*"]
        await connect.ensure(js, config, layout)  # a second node starting finds them as they are
    assert await connect.check(config) == []
    other = _config(js_cluster, partitions=8)
    problems = await connect.check(other)
    assert any("partitions cannot change" in p for p in problems), problems


async def test_an_unreachable_cluster_is_one_line() -> None:
    config = JetStreamConfig(servers=["nats://127.0.0.1:9"], connect_timeout_s=0.5)
    problems = await connect.check(config)
    assert len(problems) == 1
    assert "cannot connect to JetStream at nats://127.0.0.1:9" in problems[0]


async def test_a_message_survives_the_round_trip_through_headers(
    js_cluster: JetStreamCluster,
) -> None:
    config = _config(js_cluster)
    layout = Layout.of(config)
    row = OutboxRow(
        message_id="m-1",
        source="web",
        type="track",
        event="Line\r\nBreak % ünïcode",
        user_id="u 1",
        anonymous_id=None,
        received_at="2026-12-07T00:00:00.000Z",
        payload='{"event":"x"}',
    )
    async with connect.connected(config) as client:
        js = client.jetstream()
        await connect.ensure(js, config, layout)
        subject = layout.subject_for(row)
        ack = await js.publish(
            subject, row.payload.encode(), headers=headers_of(row, by_source=True)
        )
        again = await js.publish(subject, b"{}", headers=headers_of(row, by_source=True))
        assert again.duplicate
        assert again.seq == ack.seq
        stored = await js.get_msg(layout.stream, ack.seq)
        assert row_of(stored.headers, stored.data or b"") == row


@pytest.mark.parametrize("key", ["u1", "someone@example.com", None])
def test_one_user_always_lands_on_one_partition(key: str | None) -> None:
    layout = Layout(partitions=16)
    assert layout.partition_of(key) == layout.partition_of(key)
    assert 0 <= layout.partition_of(key) < 16
