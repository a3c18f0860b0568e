"""A node's records of counts per interval (cdpd/cluster/flow_counts.py) and their sum over a
window (cdpd/cluster/flow_reads.py): pure parts, no cluster."""

from __future__ import annotations

from collections import Counter

from cdpd.cluster.flow_counts import FlowRecord, Key, LatencyKey, Period
from cdpd.cluster.flow_reads import WindowCounts, add_record
from cdpd.cluster.layout import Layout
from cdpd.console.flow import hour_of


def _counted(*keys: Key) -> Counter[Key]:
    return Counter(keys)


def test_a_minutes_record_holds_everything_counted_in_it_and_the_next_minute_starts_empty() -> None:
    minutes = Period("m", lambda m: m)
    received = ("destination", "hook", "2026-01-02T03:04Z", "received", "")
    none: Counter[LatencyKey] = Counter()
    assert minutes.add("2026-01-02T03:04Z", _counted(received), none) == {("destination", "hook")}
    minutes.add(
        "2026-01-02T03:04Z", _counted(received), Counter({("hook", "2026-01-02T03:04Z", 25): 2})
    )
    record = minutes.record("a", "destination", "hook")
    # Cumulative: a flush rewrites the whole record, so writing it twice counts once.
    assert record.counts == [("2026-01-02T03:04Z", "received", "", 2)]
    assert record.latency == [("2026-01-02T03:04Z", 25, 2)]
    assert record.period == "2026-01-02T03:04Z"
    minutes.add("2026-01-02T03:05Z", Counter(), none)
    assert minutes.record("a", "destination", "hook").counts == []


def test_an_hours_record_counts_by_hour_across_its_minutes() -> None:
    hours = Period("h", hour_of)
    none: Counter[LatencyKey] = Counter()
    hours.add(
        "2026-01-02T03:04Z",
        _counted(("destination", "hook", "2026-01-02T03:04Z", "delivered", "")),
        none,
    )
    hours.add(
        "2026-01-02T03:59Z",
        _counted(("destination", "hook", "2026-01-02T02:59Z", "delivered", "")),
        none,
    )
    assert hours.record("a", "destination", "hook").counts == [
        ("2026-01-02T02Z", "delivered", "", 1),
        ("2026-01-02T03Z", "delivered", "", 1),
    ]


def test_a_window_sums_every_nodes_records_from_its_start() -> None:
    counts = WindowCounts(Counter(), Counter(), Counter())
    for node in ("a", "b"):
        record = FlowRecord(
            node, "destination", "hook", "2026-01-02T03:05Z",
            [("2026-01-02T03:04Z", "delivered", "", 2), ("2026-01-02T02:00Z", "delivered", "", 5)],
            [("2026-01-02T03:04Z", 10, 3)],
        )  # fmt: skip
        add_record(counts, record, since="2026-01-02T03:00Z", chart_from="2026-01-02T03:00Z")
    assert counts.totals == {("delivered", ""): 4}
    assert counts.points == {("2026-01-02T03:04Z", "delivered"): 4}
    assert counts.p95_ms() == 10


def test_a_record_subject_is_one_token_per_part() -> None:
    subject = Layout().metrics_subject("destination", "my.hook", "m", "abc123", "202601020304")
    assert subject == "cdpd.metrics.destination.my~hook.m.abc123.202601020304"
    assert Layout().metrics_filter("destination", "my.hook", "h") == (
        "cdpd.metrics.destination.my~hook.h.>"
    )
