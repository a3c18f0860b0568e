"""The JetStream backend's streams and buckets on a real three-server cluster."""

from __future__ import annotations

import msgspec
import nats.errors
import pytest
from structlog.testing import capture_logs

from cdpd.cluster import connect
from cdpd.cluster.console_state import sessions_bucket
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


async def test_a_request_the_cluster_does_not_answer_in_time_is_made_again(
    js_cluster: JetStreamCluster,
) -> None:
    """A slow cluster gets several chances, then a one-line error; and what a request that
    timed out did is found as it should be by the next."""
    config = _config(js_cluster)
    layout = Layout.of(config)
    async with connect.connected(config) as client:
        impatient = client.jetstream(timeout=0.000_001)  # no answer can come in time
        with capture_logs() as logs, pytest.raises(connect.ClusterUnreachable) as raised:
            await connect.ensure(impatient, config, layout)
        assert str(raised.value) == (
            f"JetStream did not answer making sure of stream {layout.stream} "
            f"({connect.ENSURE_ATTEMPTS} requests timed out)"
        )
        timed_out = [e["attempt"] for e in logs if e["event"] == "jetstream_request_timed_out"]
        assert timed_out == list(range(1, connect.ENSURE_ATTEMPTS + 1))
        first_bucket = connect.bucket_configs(config, layout)[0]
        with pytest.raises(nats.errors.TimeoutError):
            await impatient.create_key_value(first_bucket)  # sent, its answer not awaited
        js = client.jetstream()
        await connect.ensure(js, config, layout)
        assert (await js.stream_info(layout.stream)).config.num_replicas == 3
        bucket = await js.key_value(first_bucket.bucket)
        assert (await bucket.status()).stream_info.config.num_replicas == 3
        # The console's sessions bucket is made sure of as its stage starts, the same way.
        with pytest.raises(connect.ClusterUnreachable, match=layout.sessions_bucket):
            await sessions_bucket(impatient, config, layout, 3600)
        sessions = await sessions_bucket(js, config, layout, 3600)
        assert (await sessions.status()).stream_info.config.max_age == 3600


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
