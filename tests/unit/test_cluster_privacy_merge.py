"""Merging a node's sighting of a field into the cluster's inbox keeps what the SQLite
backend's upsert keeps, in whichever order the nodes write."""

from __future__ import annotations

import itertools

from cdpd.cluster.privacy_store import inbox_key, inventory_key, merge_inbox
from cdpd.privacy.store import InboxField


def _seen(first: str, last: str, sample: str | None, suggested: str | None) -> InboxField:
    matcher = "email" if suggested else None
    on = "key" if suggested else None
    return InboxField("website", "properties.email", suggested, matcher, on, first, last, sample)


def test_a_merge_keeps_the_first_sighting_the_last_one_and_the_first_sample() -> None:
    early = _seen("2026-12-07T10:00:00.000Z", "2026-12-07T10:00:05.000Z", None, None)
    sampled = _seen("2026-12-07T10:00:02.000Z", "2026-12-07T10:01:00.000Z", "j***@e", "yellow")
    late = _seen("2026-12-07T10:00:03.000Z", "2026-12-07T10:02:00.000Z", "k***@e", None)
    merged = merge_inbox(merge_inbox(early, sampled), late)
    assert (merged.first_seen, merged.last_seen) == (early.first_seen, late.last_seen)
    assert merged.sample == "j***@e"  # taken once, then kept
    assert (merged.suggested_class, merged.matcher) == ("yellow", "email")  # not lost to None
    for order in itertools.permutations([early, sampled, late]):
        folded = order[0]
        for seen in order[1:]:
            folded = merge_inbox(folded, seen)
        assert (folded.first_seen, folded.last_seen, folded.suggested_class) == (
            early.first_seen,
            late.last_seen,
            "yellow",
        )


def test_keys_are_valid_bucket_keys_whatever_a_field_holds() -> None:
    for field in ("properties.email", "properties.a b.c", "traits.名前", "context.*.>"):
        for key in (inventory_key(field), inbox_key("website", field)):
            assert len(key) == 32
            assert all(c in "0123456789abcdef" for c in key)
    assert inbox_key("a", "properties.x") != inbox_key("b", "properties.x")
