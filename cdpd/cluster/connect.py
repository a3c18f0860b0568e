"""Connecting to the JetStream cluster, and making sure its streams and buckets exist with the
settings `[storage.jetstream]` asks for (created on first start, checked on every start)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from cdpd.cluster.layout import Layout
from cdpd.config import JETSTREAM_DEDUP_WINDOW_S, JetStreamConfig

# Leases expire this long after their holder last renewed them (cdpd/cluster/lease.py).
LEASE_TTL_S = 5.0
# How long JetStream itself remembers a Nats-Msg-Id; the same id is dropped inside it.
DUPLICATE_WINDOW_S = float(JETSTREAM_DEDUP_WINDOW_S)
PARTITIONS_NOTE = "partitions="
# How many times a request making sure of a stream or bucket is made before the cluster is
# taken as not answering (each waits `connect_timeout_s`).
ENSURE_ATTEMPTS = 4

T = TypeVar("T")


log = structlog.get_logger("cdpd.cluster")


async def _log_error(exc: Exception) -> None:
    """Connection errors while the client reconnects on its own: a line, not a traceback."""
    log.warning("jetstream_connection_error", error=repr(exc))


class ClusterUnreachable(Exception):
    """The cluster cannot be reached, or its streams do not match the config (one line)."""


@asynccontextmanager
async def connected(config: JetStreamConfig, name: str = "cdpd") -> AsyncIterator[Client]:
    """A connection that reconnects on its own for as long as it is held."""
    client = Client()
    try:
        # With unlimited reconnects the first connect would also retry forever: bound it.
        await asyncio.wait_for(
            client.connect(
                servers=config.servers,
                name=name,
                user=config.user,
                password=config.password(),
                token=config.token(),
                user_credentials=config.creds_file,
                connect_timeout=math.ceil(config.connect_timeout_s),
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=_log_error,
            ),
            timeout=config.connect_timeout_s * (len(config.servers) + 1),
        )
    except Exception as exc:  # nats raises several unrelated types for one cause
        await client.close()
        servers = ", ".join(config.servers)
        reason = "timed out" if isinstance(exc, TimeoutError) else repr(exc)
        raise ClusterUnreachable(f"cannot connect to JetStream at {servers}: {reason}") from exc
    try:
        yield client
    finally:
        await client.drain()


METRICS_KEEP_S = 8 * 24 * 3600  # as the SQLite backend's flow counts (console/flow.py)


def stream_configs(config: JetStreamConfig, layout: Layout) -> list[StreamConfig]:
    """Every stream the backend uses: accepted messages, what ingest writes beside them, and
    dead letters. All are replicated, file-backed and kept for `max_age_s`."""
    messages = f"cdpd accepted messages; {PARTITIONS_NOTE}{layout.partitions}"
    return [
        _stream(config, layout.stream, layout.messages_subjects, messages),
        _stream(
            config,
            layout.aux_stream,
            layout.aux_subjects,
            "cdpd rejects, violations and the other rows ingest writes",
        ),
        _stream(
            config, layout.dead_stream, layout.dead_subjects, "cdpd dead letters, by destination"
        ),
        _stream(
            config,
            layout.commands_stream,
            layout.profile_commands_subject,
            "cdpd commands to the profiles lease holder",
        ),
        metrics_stream_config(config, layout),
    ]


def metrics_stream_config(config: JetStreamConfig, layout: Layout) -> StreamConfig:
    """Each node's counts per minute and per hour (cdpd/cluster/flow_counts.py): a subject per
    node, name and period holding that record's latest value only, kept as long as the SQLite
    backend keeps its counts."""
    streamed = _stream(
        config,
        layout.metrics_stream,
        layout.metrics_subjects,
        "cdpd counts per interval, per node",
    )
    return dataclasses.replace(streamed, max_age=float(METRICS_KEEP_S), max_msgs_per_subject=1)


def _stream(config: JetStreamConfig, name: str, subjects: str, description: str) -> StreamConfig:
    return StreamConfig(
        name=name,
        description=description,
        subjects=[subjects],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=config.replicas,
        max_age=float(config.max_age_s),
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def dedup_stream_config(config: JetStreamConfig, layout: Layout, window_s: int) -> StreamConfig:
    """cdpd's dedup window beyond JetStream's own: one marker per message id, on a subject of
    its own that takes one message (the first) and refuses the next until the marker ages out
    after `window_s` (`[storage] dedup_window_s`)."""
    return StreamConfig(
        name=layout.dedup_stream,
        description="cdpd message ids seen within the dedup window",
        subjects=[layout.dedup_subjects],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=config.replicas,
        max_age=float(window_s),
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        duplicate_window=min(DUPLICATE_WINDOW_S, float(window_s)),
    )


async def ensure_dedup(
    js: JetStreamContext, config: JetStreamConfig, layout: Layout, window_s: int
) -> None:
    """Create the dedup stream, or bring its window to `window_s` (the window can change)."""
    wanted = dedup_stream_config(config, layout, window_s)

    async def make_sure() -> None:
        try:
            info = await js.stream_info(layout.dedup_stream)
        except NotFoundError:
            await js.add_stream(wanted)
            return
        if info.config.max_age != wanted.max_age:
            await js.update_stream(wanted)

    await made_sure(make_sure, f"stream {layout.dedup_stream}")


def bucket_configs(config: JetStreamConfig, layout: Layout) -> list[KeyValueConfig]:
    def bucket(
        name: str, description: str, ttl: float | None = None, history: int = 1
    ) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=name,
            description=description,
            ttl=ttl,
            history=history,
            storage=StorageType.FILE,
            replicas=config.replicas,
        )

    return [
        bucket(layout.positions_bucket, "cdpd positions of the stages that run on one node"),
        bucket(layout.circuits_bucket, "cdpd circuit state per destination"),
        bucket(layout.rates_bucket, "cdpd rate-limit windows per destination", ttl=60.0),
        bucket(layout.leases_bucket, "cdpd leases of one-node stages", ttl=LEASE_TTL_S),
        bucket(layout.inventory_bucket, "cdpd privacy inventory: classified fields"),
        bucket(layout.inbox_bucket, "cdpd privacy inbox: fields seen per source"),
        bucket(layout.console_bucket, "cdpd console people, roles and sessions"),
        bucket(layout.regulations_bucket, "cdpd regulations, their progress and suppressions"),
        bucket(layout.confd_bucket, "cdpd conf.d files changed from the console", history=64),
        # Ledger rows last as long as the messages they are about.
        bucket(layout.ledger_bucket, "cdpd delivery ledger", ttl=float(config.max_age_s)),
        # An outcome lasts as long as its command in the commands stream.
        bucket(
            layout.outcomes_bucket,
            "cdpd outcomes of the profiles lease holder's commands",
            ttl=float(config.max_age_s),
        ),
    ]


async def ensure(js: JetStreamContext, config: JetStreamConfig, layout: Layout) -> None:
    """Create what is missing; raise ClusterUnreachable when an existing stream disagrees with
    the config in a way that cannot be changed in place (its subjects or partitions)."""
    for wanted in stream_configs(config, layout):
        await made_sure(partial(_ensure_stream, js, wanted), f"stream {wanted.name}")
    for bucket in bucket_configs(config, layout):
        await made_sure(partial(js.create_key_value, bucket), f"bucket {bucket.bucket}")


async def _ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> None:
    try:
        info = await js.stream_info(wanted.name or "")
    except NotFoundError:
        await js.add_stream(wanted)
        return
    problems = mismatches(wanted, info.config)
    if problems:
        raise ClusterUnreachable(f"stream {wanted.name}: " + "; ".join(problems))


async def made_sure(request: Callable[[], Awaitable[T]], what: str) -> T:
    """Make `request`, again when it times out: a cluster just started or busy electing the
    leader of a new stream can take longer than one request's timeout, and making sure of a
    stream or bucket is the same request however often it is made (one that timed out may
    have created it). ClusterUnreachable when it never answers."""
    for attempt in range(1, ENSURE_ATTEMPTS + 1):
        try:
            return await request()
        except nats.errors.TimeoutError:
            log.warning("jetstream_request_timed_out", making_sure_of=what, attempt=attempt)
    raise ClusterUnreachable(
        f"JetStream did not answer making sure of {what} ({ENSURE_ATTEMPTS} requests timed out)"
    )


def mismatches(wanted: StreamConfig, actual: StreamConfig) -> list[str]:
    problems = []
    if sorted(actual.subjects or []) != sorted(wanted.subjects or []):
        problems.append(f"subjects are {actual.subjects}, the config needs {wanted.subjects}")
    if actual.num_replicas != wanted.num_replicas:
        problems.append(
            f"replicas are {actual.num_replicas}, the config says {wanted.num_replicas}"
        )
    partitioned = wanted.description and PARTITIONS_NOTE in wanted.description
    if partitioned and actual.description != wanted.description:
        problems.append(
            f"it was created as '{actual.description}', the config says '{wanted.description}'"
            " (partitions cannot change once the stream exists)"
        )
    return problems


async def check(config: JetStreamConfig) -> list[str]:
    """For `cdpd check-config`: problems with the cluster (unreachable, or streams that do not
    match); empty when it is reachable and every existing stream matches. Creates nothing."""
    layout = Layout.of(config)
    try:
        async with connected(config, name="cdpd check-config") as client:
            js = client.jetstream()
            problems = []
            for wanted in stream_configs(config, layout):
                try:
                    info = await js.stream_info(wanted.name or "")
                except NotFoundError:
                    continue  # created by the first node that starts
                problems += [f"stream {wanted.name}: {p}" for p in mismatches(wanted, info.config)]
            return problems
    except ClusterUnreachable as exc:
        return [str(exc)]
