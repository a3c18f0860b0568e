import sqlite3
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdpd.mapping.fql import FqlError, matches, parse, to_sql

ORDER = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u1",
    "properties": {"total": 120.5, "currency": "USD", "coupon": None, "gift": True, "n": 3},
    "context": {"page": {"path": "/checkout/pay"}},
}
PAGE = {"type": "page", "anonymousId": "a1", "name": "Home", "properties": {"total": "12"}}


@pytest.mark.parametrize(
    ("condition", "order", "page"),
    [
        ('type = "track"', True, False),
        ('type = "track" and event = "Order Completed"', True, False),
        ('type = "track" and event != "Order Completed"', False, False),
        ('type = "track" or type = "page"', True, True),
        ("properties.total > 100", True, False),  # "12" is a string: not a number
        ("properties.total <= 120.5", True, False),
        ("properties.n = 3", True, False),
        ('properties.n = "3"', False, False),
        ("properties.gift = true", True, False),
        ("properties.coupon = null", True, True),
        ("userId != null", True, False),
        ("anonymousId != null", False, True),
        ('contains(event, "Order")', True, False),
        ('match(context.page.path, "/checkout*")', True, False),
        ('!match(context.page.path, "/checkout*")', False, False),  # PAGE has no path: false
        ('!contains(context.page.path, "admin")', True, False),
        ("properties.n != 4", True, False),  # a number: "12" is not one
        ('properties.total != "12"', True, False),
        ("event = 3", False, False),  # event is compared as text: the event named "3"
        ('type = "track" and event = "x" or type = "page"', True, True),  # or, for all three
        ('properties.total > "100"', True, False),
        ('not (type = "track" and properties.total > 200)', True, True),
        ('match(name, "H?me")', False, False),  # only * is a wildcard
        ('(type = "page") and (name = "Home" or name = "About")', False, True),
    ],
)
def test_matches(condition: str, order: bool, page: bool) -> None:
    node = parse(condition)
    assert matches(node, ORDER) is order
    assert matches(node, PAGE) is page
    assert _sql_matches(condition, ORDER) is order
    assert _sql_matches(condition, PAGE) is page


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        ('type = "track" and', "at the end"),
        ('type == "track"', "column 7"),
        ('event = "Order" or (type = "track"', "expected ')'"),
        ("contains(event, )", "takes a string at column 17"),
        ("type = track", "expected a value"),
        ('type = "track" #', "unexpected character '#' at column 16"),
        ('and = "x"', "expected a field name at column 1"),
    ],
)
def test_errors_say_where(condition: str, says: str) -> None:
    with pytest.raises(FqlError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse(condition)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-5, 5, allow_nan=False)
    | st.sampled_from(["a", "ab", "b*", "A", "", "3", "true", "null", "é*", "a b"]),
    lambda inner: st.dictionaries(st.sampled_from(["x", "y", "a b"]), inner, max_size=2),
    max_leaves=4,
)
conditions = st.sampled_from(
    [
        'x = "a"', "x = 1", "x != 1", "x > 0", "x <= -1", "x = null", "x != null", "x = true",
        'contains(x, "a")', 'match(x, "a*")', 'match(x, "b*")', "x.y = 2", 'x.y != "ab"',
        'not (x = "a" or y > 2)', 'x = "a" and y = null', "x.x.y >= 0",
        '!contains(x, "a")', '!match(x, "*b")', 'match(x, "ab")', 'contains(x, "")',
        'match(x, "*")', '!match(x, "a*")', "x != true", 'x != "3"', 'x > "2"', "x < 2.5",
        'x.a\\ b = "a"', 'x = "a" and y = "b" or x = 1', 'x = 1 or y = 2 and x != null',
        "type = 3", 'type != "a"', "event = true", "event = null", "name = null",
        'name != "a"', "userId = true", "userId != null", "userId != 3", 'contains(event, 3)',
        '!match(name, "é*")', "properties.x != 0",
    ]
)  # fmt: skip
roots = st.sampled_from(["x", "y", "type", "event", "name", "userId", "properties"])


@settings(max_examples=500, deadline=None)
@given(message=st.dictionaries(roots, json_values), condition=conditions)
def test_python_and_sql_agree(message: dict[str, Any], condition: str) -> None:
    assert matches(parse(condition), message) == _sql_matches(condition, message)


def _sql_matches(condition: str, message: dict[str, Any]) -> bool:
    sql, params = to_sql(parse(condition))
    with sqlite3.connect(":memory:") as conn:
        # `type` stands for the outbox's column, which holds the message's type as text.
        kind = message.get("type")
        ((result,),) = conn.execute(
            f"SELECT {sql} FROM (SELECT ? AS payload, ? AS type)",
            [
                *params,
                msgspec.json.encode(message).decode(),
                kind if isinstance(kind, str) else "\0",
            ],
        ).fetchall()
    return bool(result)
