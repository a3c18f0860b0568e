"""Bad input never crashes Engage: any text is a plan or a QueryError with a position inside
the text; any JSON-like message applies without an exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cdpd.engage import catalog
from cdpd.engage.plan import compile_query
from cdpd.engage.state import ProfileState, apply
from cdpd.engage.syntax import QueryError

TOKENS = st.sampled_from(
    [
        "event",
        "trait",
        "property",
        "context",
        "literal",
        "entity",
        "(",
        ")",
        "{",
        "}",
        "[",
        "]",
        ".",
        ",",
        ":",
        "'Order'",
        '"x"',
        "7",
        "days",
        "hours",
        "parent",
        "exclude",
        "within",
        "between",
        "where",
        "count",
        "sum",
        "mode",
        "unique",
        "as",
        "string",
        "=",
        ">=",
        "!=",
        "<",
        "AND",
        "OR",
        "NOT",
        "ANY",
        "ALL",
        "exists",
        "one_of",
        "within_last",
        "2023-12-07T18:50:00Z",
        "-1",
        "1.5",
        "'",
        "\\\\",
        "#",
        " ",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(TOKENS, max_size=25).map("".join) | st.text(max_size=60))
def test_any_text_compiles_or_fails_with_a_position(text: str) -> None:
    error: QueryError | None = None
    try:
        compile_query(text)
    except QueryError as exc:
        error = exc
    if error is not None:
        assert 0 <= error.offset <= len(text)
        assert "^" in error.render(text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
CAT = catalog.build(
    [
        catalog.Source(
            key="n",
            kind="computed_trait",
            query="event('x').where(property('a') > 1).within(1 days).sum(property('v'))",
        ),
        catalog.Source(key="m", kind="computed_trait", query="event('x').mode(property('v'), 1)"),
        catalog.Source(key="u", kind="computed_trait", query="event('x').unique(property('v'))"),
        catalog.Source(key="f", kind="computed_trait", query="event('x').first(property('v'))"),
        catalog.Source(
            key="aud",
            kind="audience",
            query="trait('a').within_last(3 days) OR trait('b').contains('q')",
        ),
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["track", "identify", "page", "group", "screen", "alias"]),
            "event": st.sampled_from(["x", "y"]) | JSON,
            "properties": JSON,
            "traits": JSON,
            "context": JSON,
            "timestamp": st.sampled_from(["2026-03-01T12:00:00Z", "1960-01-01", "garbage"]) | JSON,
            "userId": JSON,
            "groupId": JSON,
        }
    )
)
def test_any_message_applies(message: dict[str, Any]) -> None:
    state = ProfileState()
    apply(state, message, CAT.by_event, 1_772_366_400_000)
    catalog.evaluate(CAT, state, 1_772_366_400_000)


DEPENDENT = catalog.build(
    [
        catalog.Source(key="orders", kind="computed_trait", query="event('Order').count()"),
        catalog.Source(key="buyer", kind="audience", query="trait('orders') >= 2"),
        catalog.Source(
            key="vip", kind="audience", query="trait('buyer') = true AND trait('plan') = 'pro'"
        ),
        catalog.Source(key="views", kind="computed_trait", query="event('View').count()"),
        catalog.Source(key="pro", kind="audience", query="trait('plan') = 'pro'"),
        catalog.Source(
            key="anon_views",
            kind="audience",
            query="event('View').count() >= 1",
            include_anonymous=True,
        ),
    ]
)
STEP_MESSAGES = st.sampled_from(
    [
        {"type": "track", "event": "Order", "anonymousId": "a1"},
        {"type": "track", "event": "View", "anonymousId": "a1"},
        {"type": "track", "event": "Other", "anonymousId": "a1"},
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
        {"type": "identify", "anonymousId": "a1", "traits": {"plan": "free"}},
        {"type": "identify", "anonymousId": "a1", "traits": {"plan": None}},
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(STEP_MESSAGES, min_size=1, max_size=4), max_size=6))
def test_evaluating_only_what_a_batch_touched_gives_every_definitions_value(
    batches: list[list[dict[str, Any]]],
) -> None:
    """A batch re-evaluates only the definitions reading what it touched (and those reading
    them); the values and changes are those of evaluating every definition."""
    now_ms = 1_772_366_400_000
    state = ProfileState()
    for batch in batches:
        touched = catalog.Touched()
        for message in batch:
            identifiers = sum(len(v) for v in state.identifiers.values())
            apply(state, message, DEPENDENT.by_event, now_ms)
            if message["type"] == "track":
                touched.events.add(message["event"])
            if message["type"] == "identify":
                touched.traits = True
            touched.identifiers |= identifiers != sum(len(v) for v in state.identifiers.values())
        full = catalog.evaluate(DEPENDENT, state, now_ms)
        values, changed = catalog.evaluate_changes(DEPENDENT, state, now_ms, touched)
        assert values == full
        assert catalog.diff(DEPENDENT, state.values, values, changed) == catalog.diff(
            DEPENDENT, state.values, full
        )
        state.values = values
