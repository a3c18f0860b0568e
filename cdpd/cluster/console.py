"""The console on a JetStream node: the same pages, access rules and URLs as on the SQLite
backend, read from the cluster, so that any node answers the same.

* The live debugger reads the tail of the messages stream (an ephemeral consumer per person
  watching, from a little before the end, deleted as the person leaves) and keeps the messages
  whose `Cdpd-Source` is the source watched; a watcher that falls far behind skips to the end
  (the debugger is a sample).
* Rejects, blocked messages and violations are the rows ingest published to the aux stream,
  read over the page's window up to `AUX_READ` rows each.
* A destination's figures are the cluster's: its consumers' backlog, the messages handed out
  more than once (waiting for a retry), the dead letters, the shared circuit, and the counts
  per interval every node writes (`cdpd.cluster.flow_counts`), summed over the window, as
  are a source's messages received by type.
* People and sessions live in buckets (`cdpd.cluster.console_state`).
* The Privacy page reads and classifies through the node's privacy store (the
  `CDPD_inventory` and `CDPD_inbox` buckets), paging in Python over their listing.
* A warehouse's *sync now* asks the holder of its lease to sync at once and waits for the
  report (`cdpd.cluster.warehouse_sync`).
* Config changes (a source added, changed, disabled, enabled or removed) are checked on the
  node where they are made and stored in the `CDPD_confd` bucket, which every node follows
  into its conf.d (`cdpd.cluster.console_changes`, `cdpd.cluster.confd_sync`).
* The Profiles and Audiences pages read where the node's Profile API reads
  (`cdpd.cluster.console_profiles`): the live stores on the profiles lease holder, the newest
  snapshot elsewhere.

What the cluster does not keep (failed attempts, the observed schema, a snapshot's events
history) is shown as not kept, never made up."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from cdpd.cluster import dead, operations
from cdpd.cluster.browse import aux_records, browse, forget, reading
from cdpd.cluster.console_changes import ClusterChanges
from cdpd.cluster.console_profiles import NodeProfileStores
from cdpd.cluster.console_state import KvState, cluster_answers, sessions_bucket
from cdpd.cluster.flow_reads import WindowCounts, window_counts
from cdpd.cluster.layout import DESTINATION, SOURCE, Layout, row_of
from cdpd.cluster.store import JetStreamDeliveryStore
from cdpd.cluster.warehouse_status import lease_holder
from cdpd.cluster.warehouse_sync import SyncUnavailable, WarehouseSyncs, describe
from cdpd.config import Destination, load
from cdpd.console import overview, seams
from cdpd.console.flow import hour_of, minute_of
from cdpd.console.privacy_data import ListedPrivacy
from cdpd.console.seams import (
    DestinationFigures,
    Feed,
    PrivacyData,
    ProfileStores,
    SourceFigures,
)
from cdpd.console.web import Console, Parts, Refused
from cdpd.delivery.report import DeadDelivery
from cdpd.governance.store import SchemaField, ViolationSummary
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms, now_ms

if TYPE_CHECKING:
    from cdpd.cluster.node import NodeParts

log = structlog.get_logger("cdpd.console")

AUX_READ = 10_000  # rows of one aux table read for one page
TAIL_READ = 500  # the debugger starts this many messages before the stream's end
READ_BATCH = 256  # messages read from the stream per wait of the debugger
SKIP_AHEAD = 5_000  # a debugger this far behind the stream's end jumps to it
FORGET_S = 2.0  # deleting a watcher's consumer as it leaves waits no longer than this
NO_CONFD = {
    seams.CONFIG_CHANGES: "this node was started without a config file with an include"
    ' directory (include = "conf.d"): change the shared config on every node, then reload them'
    " (SIGHUP, `systemctl reload cdpd`)",
}
VIOLATION_GROUP = ("source", "type", "event", "violation_type", "field", "description")
SYNC_WAIT_S = 30.0  # how long the page waits for the holder's report of a sync asked from it
COUNTED_BY_NODES = (
    "Counts per interval are every node's, written by each every few seconds: the last"
    " seconds of a node that stopped abruptly are missing."
)
CHARTED = ("delivered", "retried", "failed")


class StreamFeed:
    """The debugger's tail of the messages stream for one source and one watcher."""

    def __init__(self, js: JetStreamContext, layout: Layout, source: str, capacity: int) -> None:
        self._js = js
        self._layout = layout
        self._source = source
        self._capacity = capacity
        self._sub: JetStreamContext.PullSubscription | None = None

    async def open(self, back: int = TAIL_READ) -> None:
        info = await self._js.stream_info(self._layout.stream)
        start = max(info.state.first_seq, info.state.last_seq - back + 1, 1)
        config = reading(DeliverPolicy.BY_START_SEQUENCE, start_seq=start)
        self._sub = await self._js.pull_subscribe(
            self._layout.messages_subjects, stream=self._layout.stream, config=config
        )

    async def close(self) -> None:
        """Stop reading and delete the consumer now (within FORGET_S), not after its 30 s of
        inactivity; a cluster that is gone leaves it to that threshold, without an error."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        try:
            async with asyncio.timeout(FORGET_S):
                await forget(self._js, self._layout.stream, sub)
        except (NatsError, TimeoutError) as exc:
            log.info("debugger_consumer_left", source=self._source, error=repr(exc))

    async def next(self, timeout_s: float) -> list[OutboxRow]:
        if self._sub is None:
            raise RuntimeError("the feed is not open")
        try:
            messages = await self._sub.fetch(READ_BATCH, timeout=timeout_s)
        except TimeoutError:
            return []
        rows = [row_of(m.headers, m.data) for m in messages if self._watched(m)]
        if messages and messages[-1].metadata.num_pending > SKIP_AHEAD:
            await self.close()
            await self.open(back=1)
        return rows[-self._capacity :]

    def _watched(self, message: Msg) -> bool:
        # A message with Cdpd-Destination is a dead letter replayed, not a new one.
        headers = message.headers or {}
        return headers.get(SOURCE) == self._source and DESTINATION not in headers


@dataclass(frozen=True)
class ClusterData:
    """`ConsoleData` over the cluster's streams and buckets."""

    js: JetStreamContext
    layout: Layout
    node_name: str
    store: JetStreamDeliveryStore
    privacy: PrivacyData
    profiles: ProfileStores
    syncs: WarehouseSyncs  # asks the lease holders to sync now
    unavailable: Mapping[str, str]  # NO_CONFD where conf.d does not follow the cluster

    @asynccontextmanager
    async def watch(self, source: str, capacity: int) -> AsyncIterator[Feed]:
        feed = StreamFeed(self.js, self.layout, source, capacity)
        await feed.open()
        try:
            yield feed
        finally:
            await feed.close()

    @cluster_answers
    async def source_figures(self, source: str, window: str) -> SourceFigures:
        rejected, notes = await self._by_reason("rejects", [source], window)
        blocked, more = await self._by_reason("blocked_messages", [source], window)
        flow = await window_counts(self.js, self.layout, "source", source, window)
        points = Counter({(at, m): c for (at, m), c in flow.points.items() if m == "received"})
        for counted in (rejected, blocked):
            points.update(counted.points)
        return SourceFigures(
            received={kind: c for (m, kind), c in flow.totals.items() if m == "received"},
            rejected=overview.by_count(rejected.totals, "rejected"),
            blocked=overview.by_count(blocked.totals, "blocked"),
            chart=overview.chart(
                [(at, m, c) for (at, m), c in points.items()],
                ["received", "rejected", "blocked"],
                window,
            ),
            notes=[
                COUNTED_BY_NODES,
                "Rejects and blocked messages are read from the cluster's aux stream.",
                *_truncated(flow),
                *notes,
                *more,
            ],
        )

    @cluster_answers
    async def violations(self, source: str, since_ms: int) -> list[ViolationSummary]:
        rows = await self._aux("violations", _since(since_ms))
        return summarize(r for r in rows if r.get("source") == source)

    async def schema(self, source: str) -> list[SchemaField] | None:
        return None  # not observed on this backend yet

    @cluster_answers
    async def destination_figures(
        self, destination: Destination, upstream: list[str], window: str
    ) -> DestinationFigures:
        (found,) = await operations.reports(self.store, self.js, [destination])
        rejected, notes = await self._by_reason("rejects", upstream, window)
        blocked, more = await self._by_reason("blocked_messages", upstream, window)
        rejected_total, blocked_total = rejected.totals.total(), blocked.totals.total()
        dead = await self._newest_dead(destination.name)
        flow = await window_counts(self.js, self.layout, "destination", destination.name, window)
        own = flow.totals
        counts: dict[str, int | None] = {
            "received": own["received", ""],
            "failed_on_ingest": rejected_total,
            "filtered_at_source": blocked_total,
            "filtered_at_destination": sum(c for (m, _), c in own.items() if m == "filtered"),
            "pending_retry": found.retrying,
            "retried": own["retried", ""],
            "failed": own["failed", ""],
            "delivered": own["delivered", ""],
        }
        points = [(at, metric, count) for (at, metric), count in flow.points.items()]
        return DestinationFigures(
            counts=counts,
            filtered=overview.by_count(own, "filtered"),
            p95_ms=flow.p95_ms(),
            backlog=found.pending,
            circuit=found.circuit or "closed",
            errors=[],
            dead=dead,
            dead_total=found.dead,
            chart=overview.chart(points, list(CHARTED), window),
            notes=[
                COUNTED_BY_NODES,
                f"Now: {found.pending} not yet handed out, {found.in_flight} being sent or"
                f" waiting for a retry ({found.retrying} of them retried).",
                "Failed attempts are not kept on this backend: see the dead letters below.",
                *_truncated(flow),
                *notes,
                *more,
            ],
        )

    async def payload(self, message_id: str, sources: list[str]) -> str | None:
        return None  # a stream has no index by messageId

    @cluster_answers
    async def replay_dead(self, destination: Destination) -> int:
        return await self.store.replay_dead(destination.name, format_ms(now_ms()))

    @cluster_answers
    async def retry(self, destination: Destination) -> int:
        return await operations.retry(self.store, self.js, destination, self.node_name)

    @cluster_answers
    async def warehouse_holder(self, warehouse: str) -> str | None:
        return await lease_holder(self.js, self.layout, warehouse) or ""  # "": no node now

    @cluster_answers
    async def sync_now(self, warehouse: str) -> str:
        try:
            answer = await self.syncs.ask(warehouse, SYNC_WAIT_S)
        except SyncUnavailable as exc:
            raise Refused(503, f"Not synced: {exc}.") from None
        return describe(answer, SYNC_WAIT_S)

    async def _newest_dead(self, destination: str) -> list[DeadDelivery]:
        """The destination's newest dead letters among the dead stream's last DEAD_COUNTED
        (every destination's): a bounded read, whatever the number kept."""
        try:
            info = await self.js.stream_info(self.layout.dead_stream)
        except NotFoundError:
            return []
        start = max(info.state.first_seq, info.state.last_seq - overview.DEAD_COUNTED + 1, 1)
        subject = self.layout.dead_subject(destination)
        found = await browse(
            self.js, self.layout.dead_stream, subject, overview.DEAD_COUNTED, from_seq=start
        )
        newest = list(reversed(found))[: overview.DEAD_SHOWN]
        return [
            operations.as_listed(m.metadata.sequence.stream, dead.describe(dict(m.headers or {})))
            for m in newest
        ]

    async def _aux(self, table: str, since: datetime) -> list[dict[str, Any]]:
        found = await aux_records(self.js, self.layout, table, AUX_READ, since=since)
        return [record for _, record in found]

    async def _by_reason(
        self, table: str, sources: list[str], window: str
    ) -> tuple[AuxCounts, list[str]]:
        """The table's rows of `sources` in the window: (metric, reason code) -> count, and
        (minute or hour, metric) -> count for a chart."""
        metric = {"rejects": "rejected", "blocked_messages": "blocked"}[table]
        since_ms = now_ms() - overview.WINDOWS_S[window] * 1000
        read = await self._aux(table, _since(since_ms))
        rows = [r for r in read if r.get("source") in sources]
        period_of = hour_of if window in overview.HOURLY else minute_of
        counts = AuxCounts(
            Counter((metric, str(r.get("reason_code", ""))) for r in rows),
            Counter((period_of(str(r.get("received_at", ""))), metric) for r in rows),
        )
        notes = (
            [f"Only the first {AUX_READ} {table} of the window are counted."]
            if len(read) >= AUX_READ
            else []
        )
        return counts, notes


@dataclass(frozen=True)
class AuxCounts:
    totals: Counter[tuple[str, str]]  # (metric, reason code) -> rows
    points: Counter[tuple[str, str]]  # (minute or hour, metric) -> rows


def _truncated(flow: WindowCounts) -> list[str]:
    if not flow.truncated:
        return []
    return [f"Only the first {flow.records} records of counts of the window are counted."]


def summarize(rows: Iterable[dict[str, Any]]) -> list[ViolationSummary]:
    """Violations grouped as the SQLite backend groups them: most frequent first."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(str(row.get(k) or "") for k in VIOLATION_GROUP)
        groups.setdefault(key, []).append(row)
    found = [
        ViolationSummary(
            source=source,
            type=type_,
            event=event or None,
            violation_type=violation_type,
            field=field,
            description=description,
            count=len(members),
            first_seen=min(str(m.get("received_at")) for m in members),
            last_seen=max(str(m.get("received_at")) for m in members),
            sample_message_id=max(str(m.get("message_id")) for m in members),
        )
        for (source, type_, event, violation_type, field, description), members in groups.items()
    ]
    return sorted(found, key=lambda v: (-v.count, v.source, v.event or "", v.field))


def _since(at_ms: int) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, UTC)


class ConsoleStage:
    def __init__(self, console: Console) -> None:
        self.console = console

    def routes(self) -> list[web.RouteDef]:
        return self.console.routes()


@asynccontextmanager
async def console_stage(parts: NodeParts) -> AsyncIterator[ConsoleStage]:
    """The console's routes, served with the node's operator endpoints."""
    config = parts.config
    jetstream = config.storage.jetstream
    people = await parts.js.key_value(parts.layout.console_bucket)
    sessions = await sessions_bucket(
        parts.js, jetstream, parts.layout, config.console.session_ttl_s
    )
    in_force = parts.in_force
    changes = (
        ClusterChanges(parts.config_path, load, in_force, parts.confd, parts.js)
        if parts.confd is not None and parts.config_path is not None
        else None
    )
    console = Console(
        Parts(
            config_of=lambda: in_force.config,
            state=KvState(parts.js, parts.layout, people, sessions),
            data=ClusterData(
                parts.js,
                parts.layout,
                parts.node_name,
                parts.delivery_store,
                ListedPrivacy(parts.portal()),
                NodeProfileStores(config, parts.profiles),
                WarehouseSyncs(parts.client, parts.js, parts.layout),
                {} if changes is not None else NO_CONFD,
            ),
            closing=parts.closing,
            changes=changes,
        )
    )
    yield ConsoleStage(console)
