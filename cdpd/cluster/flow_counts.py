"""A node's counts per interval for the console's source pages and Delivery Overview on the
JetStream backend: what the SQLite backend keeps in `flow_counts` and `flow_latency`
(console/flow.py), kept in memory as the node works and written to the `<stream>_METRICS`
stream every FLUSH_INTERVAL_S.

Per source: messages received by type, counted as this node's ingest stores them. Per
destination: messages received (of its sources, by their `received_at` minute) and filtered
at the destination (by reason), counted as its consumer hands them to this node for the first
time; delivered, retried and failed, sampled from the lanes' counters; request durations in the
latency buckets of `LATENCY_BOUNDS_MS` (a histogram: nodes' buckets add up, percentiles would
not).

Each node writes, per source and destination, one record per minute and one per hour it
counted in, each on a subject of its own
(`<prefix>.metrics.<scope>.<name>.m|h.<instance>.<period>`) that keeps its latest value only: a
record holds everything the node counted while that minute (or hour) lasted, so each flush
rewrites it whole. A flush written twice (a retried publish, an answer lost) counts once, and a
reader sums every node's records of a window without knowing which flush came last.
`instance` is new at each start, so a restarted node never overwrites what it wrote before. A
node killed loses what it counted since its last flush."""

from __future__ import annotations

import asyncio
import bisect
import functools
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext

from cdpd.clock import Clock
from cdpd.cluster.layout import Layout
from cdpd.console.flow import LATENCY_BOUNDS_MS, hour_of, minute_of
from cdpd.delivery.stats import LaneStats
from cdpd.model.timestamps import format_ms

log = structlog.get_logger("cdpd.cluster")

FLUSH_INTERVAL_S = 2.0
PUBLISH_TIMEOUT_S = 2.0  # a flush as the node stops waits no longer for an unreachable cluster
# Records not yet written (the cluster unreachable) kept at most, the oldest dropped first.
UNSENT_KEPT = 10_000
SCOPE = "destination"
LANE_METRICS = (("delivered", "delivered"), ("retried", "retried"), ("failed", "dead"))

Name = tuple[str, str]  # scope, name
Key = tuple[str, str, str, str, str]  # scope, name, minute, metric, reason
LatencyKey = tuple[str, str, int]  # destination, minute, bucket_ms


class FlowRecord(msgspec.Struct, frozen=True):
    """What one node counted for one name while one minute (or hour) lasted: counts by the
    minute (hour) they belong to, metric and reason; request durations by latency bucket."""

    node: str
    scope: str
    name: str
    period: str  # the minute (`2026-01-02T03:04Z`) or hour (`2026-01-02T03Z`) it was written in
    counts: list[tuple[str, str, str, int]] = []  # (minute or hour, metric, reason, count)
    latency: list[tuple[str, int, int]] = []  # (minute or hour, bucket upper bound ms, count)


_encoder = msgspec.json.Encoder()


class HasStats(Protocol):
    @property
    def stats(self) -> LaneStats: ...


class Period:
    """Everything counted while one minute (or hour) lasts, by name, as the records hold it."""

    def __init__(self, granularity: str, at_of: Callable[[str], str]) -> None:
        self.granularity = granularity  # "m" or "h"
        self._at_of = at_of  # a minute to this period's unit (itself, or its hour)
        self.key = ""
        self.counts: dict[Name, Counter[tuple[str, str, str]]] = {}
        self.latency: dict[Name, Counter[tuple[str, int]]] = {}

    def add(self, now_minute: str, counts: Counter[Key], latency: Counter[LatencyKey]) -> set[Name]:
        """Add what was counted since the last flush; the names whose record changed."""
        key = self._at_of(now_minute)
        if key != self.key:  # a new minute (hour): its records start from nothing
            self.key, self.counts, self.latency = key, {}, {}
        changed = set()
        for (scope, name, minute, metric, reason), count in counts.items():
            self.counts.setdefault((scope, name), Counter())[
                self._at_of(minute), metric, reason
            ] += count
            changed.add((scope, name))
        for (destination, minute, bucket), count in latency.items():
            self.latency.setdefault((SCOPE, destination), Counter())[
                self._at_of(minute), bucket
            ] += count
            changed.add((SCOPE, destination))
        return changed

    def record(self, node: str, scope: str, name: str) -> FlowRecord:
        counts = self.counts.get((scope, name), Counter())
        latency = self.latency.get((scope, name), Counter())
        return FlowRecord(
            node,
            scope,
            name,
            self.key,
            [(*key, count) for key, count in sorted(counts.items())],
            [(*key, count) for key, count in sorted(latency.items())],
        )


class FlowRecorder:
    """Counts what this node stores (`accepted`) and what its lanes do (`routed`, `observer`,
    the lanes' counters) and writes
    its records every FLUSH_INTERVAL_S (`run(stop)`, supervised; a last flush as it stops)."""

    def __init__(self, js: JetStreamContext, layout: Layout, node: str, clock: Clock) -> None:
        self._js = js
        self._layout = layout
        self._node = node
        self._clock = clock
        self.instance = secrets.token_hex(6)
        self._counts: Counter[Key] = Counter()
        self._latency: Counter[tuple[str, int]] = Counter()  # destination, bucket_ms
        self._lanes: Mapping[str, HasStats] = {}
        self._lane_seen: dict[tuple[str, str], int] = {}
        self._periods = (Period("m", lambda m: m), Period("h", hour_of))
        self._unsent: dict[str, bytes] = {}  # subject -> the record's newest value

    # -- counting, on the delivery path -------------------------------------------------------

    def routed(self, destination: str, received_at: str, reason: str | None) -> None:
        """A message of the stream handed to the destination's lane for the first time, and
        why it is filtered out (None: it is sent); other sources' messages are not counted."""
        if reason == "sources":
            return
        minute = minute_of(received_at)
        self._counts[SCOPE, destination, minute, "received", ""] += 1
        if reason is not None:
            self._counts[SCOPE, destination, minute, "filtered", reason] += 1

    def accepted(self, source: str, received_at: str, type_: str) -> None:
        """A message this node stored in the stream (not a duplicate), by type."""
        self._counts["source", source, minute_of(received_at), "received", type_] += 1

    def observer(self, destination: str) -> Callable[[float], None]:
        """Where a lane reports each request's duration, in seconds."""
        return functools.partial(self._observe, destination)

    def _observe(self, destination: str, duration_s: float) -> None:
        index = bisect.bisect_left(LATENCY_BOUNDS_MS, duration_s * 1000)
        # Counted in the minute of the flush that carries it: the hot path only bumps a counter.
        self._latency[destination, LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)]] += 1

    def follow(self, lanes: Mapping[str, HasStats]) -> None:
        """Count the outcomes of these lanes from their counters as they are now."""
        self._lanes = lanes
        self._lane_seen = {
            (name, attribute): getattr(lane.stats, attribute)
            for name, lane in lanes.items()
            for _, attribute in LANE_METRICS
        }

    # -- writing ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while True:
            stopping = await self._clock.wait(stop, FLUSH_INTERVAL_S)
            await self.flush()
            if stopping:
                return

    async def flush(self) -> None:
        """Add what was counted since the last flush to this minute's and this hour's records
        and write the records that changed (and any a failed flush left)."""
        minute = minute_of(format_ms(self._clock.now_ms()))
        counts, self._counts = self._counts, Counter()
        counts.update(self._sampled(minute))
        latency: Counter[LatencyKey] = Counter()
        for (destination, bucket), count in self._latency.items():
            latency[destination, minute, bucket] += count
        self._latency = Counter()
        for period in self._periods:
            for scope, name in sorted(period.add(minute, counts, latency)):
                self._keep(period, scope, name)
        await self._write_unsent()

    def _sampled(self, minute: str) -> Counter[Key]:
        """What each lane delivered, retried and gave up on since the last flush."""
        counts: Counter[Key] = Counter()
        for name, lane in self._lanes.items():
            for metric, attribute in LANE_METRICS:
                value = getattr(lane.stats, attribute)
                seen = self._lane_seen.get((name, attribute), 0)
                self._lane_seen[name, attribute] = value
                if value > seen:
                    counts[SCOPE, name, minute, metric, ""] += value - seen
        return counts

    def _keep(self, period: Period, scope: str, name: str) -> None:
        subject = self._layout.metrics_subject(
            scope, name, period.granularity, self.instance, _token(period.key)
        )
        self._unsent.pop(subject, None)  # the newest value goes last, in order of writing
        self._unsent[subject] = _encoder.encode(period.record(self._node, scope, name))
        while len(self._unsent) > UNSENT_KEPT:
            dropped = next(iter(self._unsent))
            del self._unsent[dropped]
            log.warning("flow_record_dropped", subject=dropped)

    async def _write_unsent(self) -> None:
        for subject, data in list(self._unsent.items()):
            try:
                await self._js.publish(
                    subject,
                    data,
                    timeout=PUBLISH_TIMEOUT_S,
                    stream=self._layout.metrics_stream,
                )
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("flow_records_unwritten", records=len(self._unsent), error=repr(exc))
                return  # kept for the next flush
            if self._unsent.get(subject) is data:
                del self._unsent[subject]


def _token(period: str) -> str:
    """`2026-01-02T03:04Z` -> `202601020304` (a subject token has no `.`; this sorts)."""
    return "".join(c for c in period if c.isdigit())
