"""The evaluator over per-profile aggregates: each computed-trait type with Segment's tie and
sorting rules, windows rolling forward with a fake clock, funnels, account audiences,
`historical`, merges, gating of anonymous profiles and entry/exit diffing."""

from __future__ import annotations

from typing import Any

import pytest

from cdpd.engage import catalog
from cdpd.engage.catalog import Change, Source
from cdpd.engage.state import AccountState, ProfileState, apply, merge, set_traits
from cdpd.model.timestamps import format_ms, parse_ms

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = parse_ms("2026-03-01T12:30:00Z")


def build(*queries: tuple[str, str], anonymous: bool = False, **kw: Any) -> catalog.Catalog:
    sources = [
        Source(
            key=key,
            kind="audience" if key.startswith("aud") else "computed_trait",
            query=query,
            include_anonymous=anonymous,
            **kw,
        )
        for key, query in queries
    ]
    return catalog.build(sources)


def track(event: str, at_ms: int, user: str = "u1", **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "userId": user,
        "properties": properties,
        "timestamp": format_ms(at_ms),
    }


def feed(cat: catalog.Catalog, messages: list[dict[str, Any]], now_ms: int = T0) -> ProfileState:
    state = ProfileState()
    for message in messages:
        apply(state, message, cat.by_event, now_ms)
    return state


def value(cat: catalog.Catalog, state: ProfileState, key: str, now_ms: int = T0) -> Any:
    return catalog.evaluate(cat, state, now_ms)[key]


def test_event_counter_counts_inside_the_window_only() -> None:
    cat = build(("orders", "event('Order Completed').within(30 days).count()"))
    state = feed(
        cat,
        [
            track("Order Completed", T0 - 29 * DAY),
            track("Order Completed", T0 - HOUR),
            track("Order Completed", T0 - 31 * DAY),
            track("Other", T0),
        ],
    )
    assert value(cat, state, "orders") == 2


def test_most_frequent_needs_the_minimum_and_breaks_ties_alphabetically() -> None:
    cat = build(("top", "event('Product Viewed').mode(property('category'), 2)"))
    views = [
        track("Product Viewed", T0, category=c) for c in ["shoes", "hats", "hats", "shoes", "bags"]
    ]
    assert value(cat, feed(cat, views), "top") == "hats"  # 2 each: first alphabetically
    assert value(cat, feed(cat, views[:3]), "top") == "hats"
    assert value(cat, feed(cat, views[:2]), "top") is None  # nothing seen twice


def test_mode_counts_array_elements_unless_cast_as_array() -> None:
    cat = build(
        ("each", "event('x').mode(property('tags'), 2)"),
        ("whole", "event('x').mode(property('tags') as array, 2)"),
    )
    state = feed(cat, [track("x", T0, tags=["b", "a"]), track("x", T0, tags=["a", "c"])])
    assert value(cat, state, "each") == "a"
    assert value(cat, state, "whole") is None


def test_unique_list_is_sorted_alphabetically_and_counts() -> None:
    cat = build(
        ("cats", "event('x').unique(property('c'))"),
        ("n", "event('x').unique(property('c')).count()"),
    )
    state = feed(cat, [track("x", T0, c=v) for v in ["pear", "apple", "pear", "Zed", "fig"]])
    assert value(cat, state, "cats") == ["Zed", "apple", "fig", "pear"]
    assert value(cat, state, "n") == 4


def test_aggregations_use_numeric_values_only() -> None:
    cat = build(
        ("total", "event('x').sum(property('v'))"),
        ("mean", "event('x').avg(property('v'))"),
        ("low", "event('x').min(property('v'))"),
        ("high", "event('x').max(property('v'))"),
        ("high_text", "event('x').max(property('v') as string)"),
        ("none", "event('y').avg(property('v'))"),
        ("zero", "event('y').sum(property('v'))"),
    )
    state = feed(cat, [track("x", T0, v=v) for v in [10, "2.5", "n/a", True, 7.5]])
    values = catalog.evaluate(cat, state, T0)
    assert values["total"] == 20
    assert values["mean"] == pytest.approx(20 / 3)
    assert values["low"] == 2.5
    assert values["high"] == 10
    assert values["high_text"] == "true"  # lexicographic over every value as text
    assert values["none"] is None
    assert values["zero"] == 0


def test_first_and_last_go_by_event_timestamp_not_arrival() -> None:
    cat = build(
        ("first", "event('x').first(property('p'))"), ("last", "event('x').last(property('p'))")
    )
    state = feed(
        cat,
        [
            track("x", T0 - HOUR, p="middle"),
            track("x", T0, p="late"),
            track("x", T0 - DAY, p="early"),
        ],
    )
    assert value(cat, state, "first") == "early"
    assert value(cat, state, "last") == "late"


def test_membership_expires_as_the_window_passes_without_a_new_event() -> None:
    cat = build(("aud_recent", "event('Order Completed').within(7 days).count() >= 1"))
    state = feed(cat, [track("Order Completed", T0)])
    assert value(cat, state, "aud_recent", T0) is True
    recheck = catalog.next_recheck_ms(cat, state, T0)
    assert recheck == (T0 // HOUR + 7 * 24) * HOUR
    assert value(cat, state, "aud_recent", recheck - 1) is True
    assert value(cat, state, "aud_recent", recheck) is False


def test_between_counts_only_the_band_and_enters_later() -> None:
    cat = build(("aud_band", "event('x').between(2 days, 3 days).count() >= 1"))
    state = feed(cat, [track("x", T0)])
    assert value(cat, state, "aud_band", T0) is False
    entry = catalog.next_recheck_ms(cat, state, T0)
    assert entry == (T0 // HOUR + 48) * HOUR
    assert value(cat, state, "aud_band", entry) is True
    leave = catalog.next_recheck_ms(cat, state, entry)
    assert value(cat, state, "aud_band", leave) is False


def test_buckets_older_than_any_window_are_dropped() -> None:
    cat = build(("aud_w", "event('x').within(2 hours).count() >= 1"))
    state = feed(cat, [track("x", T0 - 5 * HOUR)])
    assert state.streams == {}
    state = feed(cat, [track("x", T0)])
    apply(state, track("x", T0 + 3 * HOUR), cat.by_event, T0 + 3 * HOUR)
    (buckets,) = state.streams.values()
    assert list(buckets) == [(T0 + 3 * HOUR) // HOUR]


def test_where_filters_on_properties_and_sources() -> None:
    cat = build(
        ("aud_big", "event('Shoes Bought').where(property('price') >= 100).count() >= 1"),
        ("aud_web", "event('Shoes Bought').sources(exclude: 'ios').count() >= 1"),
    )
    state = ProfileState()
    apply(state, track("Shoes Bought", T0, price=99), cat.by_event, T0, source="ios")
    assert catalog.evaluate(cat, state, T0) == {"aud_big": False, "aud_web": False}
    apply(state, track("Shoes Bought", T0, price="150"), cat.by_event, T0, source="web")
    assert catalog.evaluate(cat, state, T0) == {"aud_big": True, "aud_web": True}


def test_page_and_screen_count_as_viewed_events() -> None:
    cat = build(
        (
            "aud_pricing",
            "event('Page Viewed').where(property('page_name') = 'Pricing').count() >= 1",
        ),
        ("screens", "event('Screen Viewed').count()"),
    )
    state = feed(
        cat,
        [
            {"type": "page", "name": "Pricing", "userId": "u1", "timestamp": format_ms(T0)},
            {"type": "screen", "name": "Home", "userId": "u1", "timestamp": format_ms(T0)},
        ],
    )
    assert catalog.evaluate(cat, state, T0) == {"aud_pricing": True, "screens": 1}


def test_traits_negation_and_absent_values() -> None:
    query = "NOT (event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200)"
    cat = build(("aud_not", query))
    state = feed(cat, [{"type": "identify", "userId": "u1", "traits": {"total_spend": 300}}])
    assert value(cat, state, "aud_not") is True
    apply(state, track("Shoes Bought", T0), cat.by_event, T0)
    assert value(cat, state, "aud_not") is False
    apply(
        state,
        {"type": "identify", "userId": "u1", "traits": {"total_spend": None}},
        cat.by_event,
        T0,
    )
    assert "total_spend" not in state.traits
    assert value(cat, state, "aud_not") is True


@pytest.mark.parametrize(
    ("query", "traits", "expected"),
    [
        ("trait('plan') = 'pro'", {"plan": "pro"}, True),
        ("trait('vip') = 'true'", {"vip": True}, True),
        ("trait('n') = 3", {"n": "3.0"}, True),
        ("trait('plan') != 'pro'", {}, False),  # differs needs a value
        ("trait('plan') != 'pro' OR trait('plan').absent()", {}, True),
        ("trait('email').contains('@gmail', '@yahoo')", {"email": "a@yahoo.com"}, True),
        ("trait('email').omits('@gmail')", {}, True),
        (
            "trait('name').starts_with('Jo') AND trait('name').ends_with('hn')",
            {"name": "John"},
            True,
        ),
        ("trait('tier').one_of('gold', 'silver')", {"tier": "gold"}, True),
        ("trait('tier').none_of('gold', 'silver')", {"tier": "bronze"}, True),
        ("trait('tier').none_of('gold')", {}, False),
        ("trait('tags').one_of('b')", {"tags": ["a", "b"]}, True),
        ("trait('address.city') = 'Oslo'", {"address": {"city": "Oslo"}}, True),
        ("trait('a\\\\.b') = 1", {"a.b": 1}, True),
        ("trait('signup').before_date('2026-01-01')", {"signup": "2025-12-31T23:00:00Z"}, True),
        ("trait('signup').after_date(2026-01-01T00:00:00Z)", {"signup": "2025-12-31"}, False),
        ("trait('renewal').within_next(7 days)", {"renewal": "2026-03-05T00:00:00Z"}, True),
        ("trait('renewal').after_next(7 days)", {"renewal": "2026-03-05T00:00:00Z"}, False),
        ("trait('seen').within_last(2 hours)", {"seen": "2026-03-01T11:00:00Z"}, True),
        ("trait('seen').within_last(1 hours)", {"seen": "2026-03-01T11:00:00Z"}, False),
        ("trait('seen').before_last(1 days)", {"seen": "2026-02-28T01:00:00Z"}, True),
        ("trait('n') >= 10 AND trait('n') < 11", {"n": 10}, True),
        ("trait('word') > 'apple'", {"word": "banana"}, True),
    ],
)
def test_comparators(query: str, traits: dict[str, Any], expected: bool) -> None:
    cat = build(("aud_q", query))
    state = ProfileState(identifiers={"user_id": ["u1"]})
    set_traits(state, traits, T0)
    assert value(cat, state, "aud_q") is expected


def test_funnel_counts_parents_followed_by_the_step() -> None:
    query = (
        "event('Shoes Bought').where(property('price') >= trait('avg_spend') AND "
        "event('Shoes Returned').within(parent: 5 days).count() >= 1).within(30 days).count() >= 1"
    )
    cat = build(("aud_returned", query))
    state = feed(
        cat,
        [
            {"type": "identify", "userId": "u1", "traits": {"avg_spend": 50}},
            track("Shoes Bought", T0 - 10 * DAY, price=80),
            track("Shoes Returned", T0 - 2 * DAY),
        ],  # 8 days later: too late
    )
    assert value(cat, state, "aud_returned") is False
    apply(state, track("Shoes Returned", T0 - 6 * DAY), cat.by_event, T0)
    assert value(cat, state, "aud_returned") is True


def test_funnel_did_not_step() -> None:
    query = (
        "event('Cart Viewed').where(NOT event('Order Completed').within(parent: 1 days)"
        ".count() >= 1).within(7 days).count() >= 1"
    )
    cat = build(("aud_abandoned", query))
    state = feed(cat, [track("Cart Viewed", T0 - 3 * HOUR)])
    assert value(cat, state, "aud_abandoned") is True
    apply(state, track("Order Completed", T0 - HOUR), cat.by_event, T0)
    assert value(cat, state, "aud_abandoned") is False


def test_definitions_read_each_other_in_dependency_order() -> None:
    cat = build(
        ("aud_big_spender", "trait('total_spend') > 100"),
        ("total_spend", "event('Order Completed').sum(property('revenue'))"),
    )
    assert [d.key for d in cat.definitions] == ["total_spend", "aud_big_spender"]
    state = feed(cat, [track("Order Completed", T0, revenue=60)] * 2)
    assert catalog.evaluate(cat, state, T0) == {"total_spend": 120, "aud_big_spender": True}


def test_cycles_and_duplicates_are_errors() -> None:
    with pytest.raises(catalog.DefinitionError, match="cycle"):
        build(("aud_a", "trait('aud_b') = true"), ("aud_b", "trait('aud_a') = true"))
    with pytest.raises(catalog.DefinitionError, match="used twice"):
        build(("aud_a", "trait('x') = 1"), ("aud_a", "trait('y') = 1"))


def test_kinds_must_end_right() -> None:
    with pytest.raises(catalog.DefinitionError, match="must end in a condition"):
        build(("aud_x", "event('x').count()"))
    with pytest.raises(catalog.DefinitionError, match="must end in a value"):
        build(("n", "event('x').count() >= 1"))


def test_anonymous_profiles_are_members_only_when_included() -> None:
    anonymous = {**track("x", T0), "userId": None, "anonymousId": "a1"}
    for include, expected in [(False, False), (True, True)]:
        cat = build(("aud_x", "event('x').count() >= 1"), anonymous=include)
        assert value(cat, feed(cat, [anonymous]), "aud_x") is expected
    cat = build(("aud_x", "event('x').count() >= 1"))
    state = feed(
        cat,
        [
            anonymous,
            {"type": "identify", "anonymousId": "a1", "traits": {"email": "a@example.com"}},
        ],
    )
    assert value(cat, state, "aud_x") is True


def test_computed_traits_of_anonymous_profiles_only_when_included() -> None:
    anonymous = {**track("x", T0), "userId": None, "anonymousId": "a1"}
    for include, expected in [(False, None), (True, 1)]:
        cat = build(("n", "event('x').count()"), anonymous=include)
        assert value(cat, feed(cat, [anonymous]), "n") == expected


def test_not_historical_counts_only_events_from_creation() -> None:
    cat = build(("aud_new", "event('x').count() >= 1"), since_ms=T0)
    state = feed(cat, [track("x", T0 - HOUR)])
    assert value(cat, state, "aud_new") is False
    apply(state, track("x", T0 + 1), cat.by_event, T0 + 1)
    assert value(cat, state, "aud_new") is True
    historical = build(("aud_new", "event('x').count() >= 1"))
    assert value(historical, feed(historical, [track("x", T0 - HOUR)]), "aud_new") is True


def test_account_audiences_any_and_all() -> None:
    cat = build(
        ("aud_any", "ANY event('Shoes Bought').count() >= 1"),
        ("aud_all", "ALL (event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200)"),
        ("aud_none", "ALL NOT event('Shoes Bought').count() >= 1"),
        ("aud_pro", "trait('plan') = 'pro' AND ANY trait('role') = 'admin'"),
    )
    buyer = feed(
        cat,
        [
            {"type": "identify", "userId": "u1", "traits": {"total_spend": 300, "role": "admin"}},
            track("Shoes Bought", T0),
        ],
    )
    other = feed(cat, [{"type": "identify", "userId": "u2", "traits": {"total_spend": 300}}])
    account = AccountState()
    set_traits(account, {"plan": "pro"}, T0)
    both = catalog.evaluate_account(cat, account, [buyer, other], T0)
    assert both == {"aud_any": True, "aud_all": False, "aud_none": False, "aud_pro": True}
    apply(other, track("Shoes Bought", T0, user="u2"), cat.by_event, T0)
    assert catalog.evaluate_account(cat, account, [buyer, other], T0)["aud_all"] is True
    assert catalog.evaluate_account(cat, AccountState(), [], T0) == {
        "aud_any": False,
        "aud_all": False,
        "aud_none": False,
        "aud_pro": False,
    }
    assert [d.key for d in cat.user_definitions] == []


def test_merge_combines_buckets_traits_and_identifiers() -> None:
    cat = build(
        ("orders", "event('Order Completed').within(7 days).count()"),
        ("first_item", "event('Order Completed').first(property('item'))"),
        ("items", "event('Order Completed').unique(property('item'))"),
    )
    a = feed(
        cat,
        [
            track("Order Completed", T0, item="b"),
            {
                "type": "identify",
                "userId": "u1",
                "traits": {"plan": "free"},
                "timestamp": format_ms(T0 - DAY),
            },
        ],
    )
    b = feed(
        cat,
        [
            track("Order Completed", T0 - HOUR, user="u2", item="a"),
            track("Order Completed", T0, user="u2", item="c"),
            {
                "type": "identify",
                "anonymousId": "x",
                "traits": {"plan": "pro"},
                "timestamp": format_ms(T0),
            },
        ],
    )
    merged = merge(a, b, cat.streams)
    assert catalog.evaluate(cat, merged, T0) == {
        "orders": 3,
        "first_item": "a",
        "items": ["a", "b", "c"],
    }
    assert merged.traits["plan"] == "pro"  # last updated wins
    assert merged.identifiers == {"user_id": ["u1", "u2"], "anonymous_id": ["x"]}
    assert catalog.evaluate(cat, a, T0)["orders"] == 1  # the inputs are left alone


def test_older_identify_does_not_overwrite_a_newer_trait() -> None:
    state = ProfileState()
    set_traits(state, {"plan": "pro"}, T0)
    set_traits(state, {"plan": "free"}, T0 - DAY)
    assert state.traits["plan"] == "pro"


def test_diff_reports_entries_exits_and_changed_values() -> None:
    cat = build(
        ("aud_x", "event('x').count() >= 1"),
        ("n", "event('x').count()"),
        ("avg", "event('x').avg(property('v'))"),
    )
    first = catalog.diff(cat, {}, {"aud_x": False, "n": 0, "avg": None})
    assert first == []  # a new profile's empty values are not sent
    assert catalog.diff(cat, {"n": 0}, {"n": 0}) == []
    assert catalog.diff(cat, {}, {"n": 2}) == [Change("n", "computed_trait", "computed", 2, None)]
    changes = catalog.diff(
        cat, {"aud_x": False, "n": 0, "avg": None}, {"aud_x": True, "n": 1, "avg": 3.0}
    )
    assert changes == [
        Change("aud_x", "audience", "entered", True, False),
        Change("n", "computed_trait", "computed", 1, 0),
        Change("avg", "computed_trait", "computed", 3.0, None),
    ]
    assert catalog.diff(cat, {"aud_x": True}, {"aud_x": False}) == [
        Change("aud_x", "audience", "exited", False, True)
    ]
    assert catalog.diff(cat, {"aud_x": True, "n": 1}, {"aud_x": True, "n": 1}) == []


def test_time_relative_comparators_recheck_every_hour() -> None:
    cat = build(("aud_soon", "trait('renewal').within_next(1 days)"))
    assert catalog.next_recheck_ms(cat, ProfileState(), T0) == (T0 // HOUR + 1) * HOUR
    static = build(("aud_static", "trait('a') = 1"))
    assert catalog.next_recheck_ms(static, ProfileState(), T0) is None


def test_only_definitions_whose_inputs_changed_are_evaluated_again() -> None:
    cat = build(
        ("orders", "event('Order Completed').count()"),
        ("aud_buyer", "trait('orders') >= 1"),
        ("views", "event('Product Viewed').count()"),
        ("aud_pro", "trait('plan') = 'pro'"),
    )
    state = feed(cat, [track("Order Completed", T0), track("Product Viewed", T0)])
    state.values = catalog.evaluate(cat, state, T0)
    # Stale on purpose: a definition that is not evaluated again keeps this value.
    state.values["views"] = 99
    state.values["aud_pro"] = True
    apply(state, track("Order Completed", T0), cat.by_event, T0)
    touched = catalog.Touched(events={"Order Completed"})
    values = catalog.evaluate(cat, state, T0, touched)
    assert values == {"orders": 2, "aud_buyer": True, "views": 99, "aud_pro": True}
    assert catalog.evaluate(cat, state, T0, catalog.Touched(traits=True))["aud_pro"] is False
    everything = catalog.evaluate(cat, state, T0, catalog.Touched(identifiers=True))
    assert everything["views"] == 1
