"""The JetStream console's pure parts: violations grouped as the SQLite backend groups them, and
people's keys that a key-value bucket accepts whatever the name."""

from __future__ import annotations

import re

from cdpd.cluster.console import summarize
from cdpd.cluster.console_state import person_key


def _violation(message_id: str, at: str, field: str = "properties.order_id") -> dict[str, object]:
    return {
        "received_at": at, "source": "website", "tracking_plan": "main",
        "message_id": message_id, "type": "track", "event": "Order Completed",
        "violation_type": "Required", "field": field,
        "description": f"{field} is required", "blocked": 0,
    }  # fmt: skip


def test_violations_are_grouped_most_frequent_first_with_their_span() -> None:
    rows = [
        _violation("m1", "2026-12-07T01:00:00.000Z"),
        _violation("m2", "2026-12-07T02:00:00.000Z", "properties.revenue"),
        _violation("m3", "2026-12-07T03:00:00.000Z"),
    ]
    first, second = summarize(rows)
    assert (first.field, first.count, second.count) == ("properties.order_id", 2, 1)
    assert (first.first_seen, first.last_seen) == (rows[0]["received_at"], rows[2]["received_at"])
    assert first.sample_message_id == "m3"
    assert first.event == "Order Completed"
    assert summarize([]) == []


def test_a_persons_key_is_a_valid_key_for_any_name_and_names_differ() -> None:
    names = ["ada", "zoë ada", "a.b/c*>", "", "ada="]
    keys = [person_key(name) for name in names]
    assert all(re.fullmatch(r"people\.[-/_=.a-zA-Z0-9]+", key) for key in keys)
    assert len(set(keys)) == len(names)
