"""What the cluster holds, from JetStream's own stream and consumer info: the JetStream
backend's `outbox stats` (admin API `GET /admin/cluster`, `/metrics`, `cdpd cluster stats`)."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cdpd.cluster.connect import connected
from cdpd.cluster.layout import Layout
from cdpd.config import JetStreamConfig


class ConsumerStatus(msgspec.Struct, frozen=True):
    name: str
    delivered_seq: int  # the last stream sequence handed to the consumer
    ack_floor_seq: int  # every message up to here is acknowledged
    pending: int  # messages in the stream not yet delivered to it (its lag)
    ack_pending: int  # delivered, waiting for an ack


class StreamStatus(msgspec.Struct, frozen=True):
    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    replicas: int
    leader: str | None
    consumers: list[ConsumerStatus]


class ClusterStatus(msgspec.Struct, frozen=True):
    streams: list[StreamStatus]


def stream_names(layout: Layout) -> list[str]:
    return [layout.stream, layout.aux_stream, layout.dead_stream, layout.dedup_stream]


async def messages_last_seq(config: JetStreamConfig) -> int:
    """The last sequence of the messages stream (0 before it exists)."""
    async with connected(config, name="cdpd") as client:
        return await stream_last_seq(client.jetstream(), Layout.of(config))


async def stream_last_seq(js: JetStreamContext, layout: Layout) -> int:
    """The last sequence of the messages stream (0 before it exists)."""
    try:
        info = await js.stream_info(layout.stream)
    except NotFoundError:
        return 0
    return info.state.last_seq


async def read(js: JetStreamContext, layout: Layout) -> ClusterStatus:
    """Every stream of the layout that exists, with the consumers of the messages stream."""
    streams = []
    for name in stream_names(layout):
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            continue
        consumers = await _consumers(js, name) if name == layout.stream else []
        state = info.state
        streams.append(
            StreamStatus(
                name=name,
                messages=state.messages,
                bytes=state.bytes,
                first_seq=state.first_seq,
                last_seq=state.last_seq,
                replicas=info.config.num_replicas or 1,
                leader=info.cluster.leader if info.cluster else None,
                consumers=consumers,
            )
        )
    return ClusterStatus(streams)


async def _consumers(js: JetStreamContext, stream: str) -> list[ConsumerStatus]:
    found = await js.consumers_info(stream)
    return sorted(
        (
            ConsumerStatus(
                name=c.name,
                delivered_seq=c.delivered.stream_seq if c.delivered else 0,
                ack_floor_seq=c.ack_floor.stream_seq if c.ack_floor else 0,
                pending=c.num_pending or 0,
                ack_pending=c.num_ack_pending or 0,
            )
            for c in found
        ),
        key=lambda c: c.name,
    )


class StatusCollector(Collector):
    """Gauges from the last status read (the /metrics handler reads it just before)."""

    def __init__(self) -> None:
        self.status = ClusterStatus([])
        self.connected = False

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cdpd_cluster_connected", "1 when the node reaches JetStream")
        up.add_metric([], 1 if self.connected else 0)
        yield up
        messages = GaugeMetricFamily(
            "cdpd_cluster_stream_messages", "Messages in each stream", labels=["stream"]
        )
        size = GaugeMetricFamily(
            "cdpd_cluster_stream_bytes", "Bytes in each stream", labels=["stream"]
        )
        last = GaugeMetricFamily(
            "cdpd_cluster_stream_last_seq", "The newest sequence of each stream", labels=["stream"]
        )
        lag = GaugeMetricFamily(
            "cdpd_cluster_consumer_pending",
            "Messages not yet delivered to each consumer of the messages stream",
            labels=["consumer"],
        )
        for stream in self.status.streams:
            messages.add_metric([stream.name], stream.messages)
            size.add_metric([stream.name], stream.bytes)
            last.add_metric([stream.name], stream.last_seq)
            for consumer in stream.consumers:
                lag.add_metric([consumer.name], consumer.pending)
        yield from (messages, size, last, lag)
