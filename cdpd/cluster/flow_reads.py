"""Reading the cluster's counts per interval for a page (what cdpd/cluster/flow_counts.py
writes): every node's records of one name over a window, summed. The 10 min and 1 h windows
read the per-minute records, 24 h and 7 days the per-hour ones, as the SQLite backend reads its
per-minute and per-hour tables (console/overview.py); a bounded read, from a little before the
window began (nodes' clocks may differ)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from cdpd.cluster.browse import browse
from cdpd.cluster.flow_counts import FlowRecord
from cdpd.cluster.layout import Layout
from cdpd.console import overview
from cdpd.model.timestamps import now_ms

RECORDS_READ = 20_000  # records of one name read for one page, at most
CLOCK_SKEW_S = 120  # how far a node's clock may be behind the reader's

_decoder = msgspec.json.Decoder(FlowRecord)


class WindowCounts(msgspec.Struct):
    """A name's counts over a window: (metric, reason) -> count; (minute or hour, metric) ->
    count from the chart's first point; latency bucket (upper bound ms) -> requests."""

    totals: Counter[tuple[str, str]]
    points: Counter[tuple[str, str]]
    latency: Counter[int]
    records: int = 0
    truncated: bool = False

    def p95_ms(self) -> int | None:
        return overview.p95_of(sorted(self.latency.items()))


async def window_counts(
    js: JetStreamContext,
    layout: Layout,
    scope: str,
    name: str,
    window_name: str,
    at_ms: int | None = None,
) -> WindowCounts:
    at_ms = now_ms() if at_ms is None else at_ms
    period = overview.span(window_name, at_ms)
    hourly = period.column == "hour"
    chart_from = overview.chart_key(period, overview.chart_start_s(window_name, at_ms))
    first = min(period.since, chart_from)
    since = datetime.fromtimestamp(overview.epoch_s(first) - CLOCK_SKEW_S, UTC)
    subject = layout.metrics_filter(scope, name, "h" if hourly else "m")
    try:
        found = await browse(js, layout.metrics_stream, subject, RECORDS_READ, since=since)
    except NotFoundError:  # no node has made the stream yet
        found = []
    counts = WindowCounts(Counter(), Counter(), Counter(), len(found), len(found) >= RECORDS_READ)
    for message in found:
        try:
            record = _decoder.decode(message.data)
        except msgspec.DecodeError:
            continue  # not one of ours: nothing to count
        add_record(counts, record, period.since, first)
    return counts


def add_record(counts: WindowCounts, record: FlowRecord, since: str, chart_from: str) -> None:
    """Add one node's record: its counts from `since` (a minute or hour) to the totals and the
    latency, from `chart_from` to the chart's points."""
    for at, metric, reason, count in record.counts:
        if at >= since:
            counts.totals[metric, reason] += count
        if at >= chart_from:
            counts.points[at, metric] += count
    for at, bucket, count in record.latency:
        if at >= since:
            counts.latency[bucket] += count
