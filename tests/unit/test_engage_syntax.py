"""Segment's query language: Segment's documented examples parse and compile; every function,
junction and precedence rule; errors point at the character."""

from __future__ import annotations

import pytest

from cdpd.engage import syntax
from cdpd.engage.plan import compile_query
from cdpd.engage.syntax import Compare, Junction, Prefix, QueryError

# The examples of Segment's query-language reference, verbatim.
SEGMENT_AUDIENCES = [
    "event('Shoes Bought').where( property('price') >= 100 ).within(7 days).count() >= 1",
    "event('Shoes Bought').where( \nproperty('price') >= trait('avg_spend')\nAND \n"
    "event('Shoes Returned').within(parent: 5 days).count() >= 1 \n).within(30 days).count() >= 1",
    "NOT ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )",
    "ALL ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )",
    "ALL NOT event('Shoes Bought').count() >= 1",
    "ANY event('Shoes Bought').count() >= 1",
    "event('Order Completed').within(30 days).count() >= 2",
    "event('Shoes Bought').where({property('price_usd') > 100}).count() >= 1",
    "event('Shoes Bought').sources({exclude: 'QgRHeujRJBM9j18yChyC', '/;hSBZDqGDPvXCKHbikPm'})"
    ".count() >= 1",
    "event('Shoes Bought').between(7 days, 10 days).count() >= 1",
    "trait('VIP') = 'true'",
]
SEGMENT_TRAITS = [
    ("event('Shoes Bought').within(30 days).avg(property('spend'))", "scalar"),
    (
        "event('Shoes Bought').where( property('price') > 100 AND property('brand') = "
        "'My Brand' ).min(property('spend'))",
        "scalar",
    ),
    ("event('Shoes Bought').within(30 days).first(property('spend'))", "scalar"),
    ("event('Shoes Bought').within(30 days).mode(property('spend'), 2)", "scalar"),
    ("event('Product Viewed').within(7 days).mode(property('category'), 2)", "scalar"),
    ("event('x').max(property('spend') as string)", "scalar"),
    ("event('x').mode(property('tags') as array, 2)", "scalar"),
    ("event('x').unique(property('spend'))", "list"),
    ("event('x').unique(property('spend')).count()", "scalar"),
    ("event('x').sum(property('spend'))", "scalar"),
    ("event('x').last(property('spend'))", "scalar"),
]
COMPARATORS = [
    "trait('a').equals(500)",
    "trait('a') == 500",
    "trait('a').differs(500)",
    "trait('a').absent()",
    "trait('a').exists()",
    "trait('a').greater_than(5) AND trait('a').at_least(5)",
    "trait('a').less_than(5) OR trait('a').at_most(5)",
    "trait('a').contains('shoes','shirts')",
    "trait('a').omits('shoes')",
    "trait('a').starts_with('total') AND trait('a').ends_with('total')",
    "trait('a').one_of('shoes','shirts') OR trait('a').none_of('shoes','shirts')",
    "trait('a').before_date('2023-12-07T18:50:00Z') AND "
    "trait('a').after_date(2023-12-07T18:50:00Z)",
    "trait('a').within_last(7 days) OR trait('a').within_next(7 days)",
    "trait('a').before_last(7 days) OR trait('a').after_next(12 hours)",
    "trait('a') = literal(100)",
    "event('x').where(context('page.url').contains('/shoes')).count() >= 1",
    "event('x').sources(exclude: ['a', 'b']).count() >= 1",
    "event('x').sources(include: 'a').count() >= 1",
    "(trait('a')) != (5) OR (trait('a')).absent()",
]


@pytest.mark.parametrize("query", SEGMENT_AUDIENCES + COMPARATORS)
def test_documented_audiences_compile_to_conditions(query: str) -> None:
    assert compile_query(query).result == "boolean"


@pytest.mark.parametrize(("query", "result"), SEGMENT_TRAITS)
def test_documented_traits_compile_to_values(query: str, result: str) -> None:
    assert compile_query(query).result == result


def test_and_binds_tighter_than_or() -> None:
    tree = syntax.parse("trait('a') = 1 OR trait('b') = 2 AND trait('c') = 3")
    assert isinstance(tree, Junction)
    assert tree.op == "OR"
    assert isinstance(tree.items[1], Junction)
    assert tree.items[1].op == "AND"


def test_not_applies_to_the_comparison_that_follows() -> None:
    tree = syntax.parse("NOT trait('a') = 1 AND trait('b') = 2")
    assert isinstance(tree, Junction)
    assert tree.op == "AND"
    first = tree.items[0]
    assert isinstance(first, Prefix)
    assert isinstance(first.operand, Compare)


def test_all_not_nests() -> None:
    tree = syntax.parse("ALL NOT event('x').count() >= 1")
    assert isinstance(tree, Prefix)
    assert tree.op == "ALL"
    assert isinstance(tree.operand, Prefix)
    assert tree.operand.op == "NOT"


def test_keywords_and_sugar_forms_agree() -> None:
    assert compile_query("trait('a') = 1 and trait('b') == 2").result == "boolean"


def test_account_queries_are_marked() -> None:
    assert compile_query("ANY event('x').count() >= 1").account
    assert not compile_query("event('x').count() >= 1").account


def test_streams_are_shared_by_equal_chains() -> None:
    plan = compile_query(
        "event('x').where(property('a') = 1).within(7 days).count() >= 1 OR "
        "event('x').where( property('a')=1 ).within(30 days).count() >= 3"
    )
    assert len(plan.streams) == 1
    assert plan.streams[0].horizon_hours == 30 * 24


def _error(query: str) -> QueryError:
    with pytest.raises(QueryError) as info:
        compile_query(query)
    return info.value


@pytest.mark.parametrize(
    ("query", "column", "words"),
    [
        ("event('x').count( >= 1", 19, "found '>='"),
        ("event('x').within(7 weeks).count() > 1", 21, "unknown time unit 'weeks'"),
        ("trait('x') >", 13, "found the end of the query"),
        ("evnt('x')", 1, "unknown function evnt()"),
        ("event('x').count() >= 1 AND", 28, "found the end"),
        ("event('x').count() >= 1)", 24, "closes nothing"),
        ("'abc", 1, "never closed"),
        ("trait('a') = 1 # 2", 16, "unexpected character '#'"),
        ("event('x').within(parent: 5 days).count() > 1", 12, "inside the where()"),
        ("trait('a').count()", 12, "applies to an event() chain"),
        ("event('x').exists()", 12, "needs a reducer"),
        ("event('x').within(7 days)", 1, "needs a reducer"),
        ("property('a') > 1", 1, "only valid inside where()"),
        ("event('x').sum(trait('a'))", 16, "reduces an event property"),
        ("event('x').mode(property('a'))", 12, "mode() takes property('x'), 2"),
        ("event('x').mode(property('a'), 0)", 32, "minimum frequency"),
        ("event('x').sum(property('a') as string)", 30, "takes no 'as' type"),
        ("trait('a').within_last('x')", 24, "takes a duration"),
        ("trait('a').before_date('soon')", 24, "ISO-8601"),
        ("trait('a').contains()", 12, "at least one value"),
        ("trait('a').exists() = 1", 21, "compares a value, not a condition"),
        ("event('x').within(7 days).within(8 days).count() > 1", 27, "one within()"),
        ("entity('orders').count() >= 1", 1, "Linked Audiences"),
        (
            "event('x').count() >= 1 AND ANY event('y').count() >= 1",
            1,
            "reads events inside ANY or ALL",
        ),
        ("ANY ANY event('x').count() >= 1", 5, "cannot be nested"),
        (
            "event('x').where(property('a') = property(parent: 'a')).count() > 1",
            34,
            "dynamic property references",
        ),
        ("", 1, "empty"),
    ],
)
def test_errors_point_at_the_character(query: str, column: int, words: str) -> None:
    error = _error(query)
    rendered = error.render(query)
    assert words in rendered
    assert rendered.startswith(f"line 1, column {column}:"), rendered
    caret_line = rendered.splitlines()[2]
    assert caret_line.index("^") - 4 == column - 1


def test_error_on_a_later_line_names_the_line() -> None:
    query = "event('x').where(\n  property('a') >= \n).count() >= 1"
    rendered = _error(query).render(query)
    assert rendered.startswith("line 3, column 1:")
    assert rendered.splitlines()[1] == "    ).count() >= 1"


def test_more_than_fifty_primary_expressions_is_an_error() -> None:
    query = " OR ".join(f"trait('t{n}') = 1" for n in range(51))
    assert "at most 50" in str(_error(query))
