from typing import Any

import pytest

from cdpd.mapping.kit import ABSENT, MappingError, evaluate, lookup, validate
from cdpd.mapping.kit import warnings as kit_warnings

ORDER: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u1",
    "messageId": "m1",
    "properties": {
        "order_id": "o-1",
        "total": 27.5,
        "coupon": None,
        "products": [
            {"product_id": "p1", "sku": "45790-32", "price": 19, "quantity": 1},
            {"product_id": "p2", "sku": "46493-32", "price": 3, "quantity": 2},
        ],
    },
    "traits": {"first_name": "Ada"},
    "context": {"page": {"path": "/checkout"}},
}


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"@path": "$.properties.total"}, 27.5),
        ({"@path": "properties.products[1].sku"}, "46493-32"),
        ({"@path": "$.properties.nope"}, ABSENT),
        ({"@path": "$."}, ORDER),
        (
            {"@template": "{{event}} by {{traits.first_name}}{{traits.last}}"},
            "Order Completed by Ada",
        ),
        ({"@literal": {"a": {"@path": "$.userId"}}}, {"a": "u1"}),  # Segment maps inside too
        ({"@literal": False}, False),
        ({"@if": {"exists": {"@path": "$.userId"}, "then": "known", "else": "anonymous"}}, "known"),
        # Segment's "blank": then when the value is there and not blank, else otherwise
        ({"@if": {"blank": {"@path": "$.properties.coupon"}, "then": 1, "else": 2}}, 2),
        ({"@if": {"blank": {"@path": "$.event"}, "then": 1, "else": 2}}, 1),
        ({"@if": {"blank": {"@path": "$.properties.coupon"}, "then": "none"}}, ABSENT),
        ({"@if": {"exists": {"@path": "$.properties.coupon"}, "then": 1}}, ABSENT),
        ({"@case": {"operator": "upper", "value": {"@path": "$.type"}}}, "TRACK"),
        (
            {"@replace": {"value": {"@path": "$.event"}, "pattern": " ", "replacement": "_"}},
            "Order_Completed",
        ),
        (
            {"@replace": {"value": "a.a.a", "pattern": ".", "replacement": "-", "global": False}},
            "a-a.a",
        ),
        (
            {
                "@arrayPath": [
                    "$.properties.products",
                    {"id": {"@path": "$.product_id"}, "n": {"@path": "quantity"}},
                ]
            },
            [{"id": "p1", "n": 1}, {"id": "p2", "n": 2}],
        ),
        ({"@json": {"mode": "encode", "value": {"@path": "$.traits"}}}, '{"first_name":"Ada"}'),
        ({"@json": {"mode": "decode", "value": '{"a": [1]}'}}, {"a": [1]}),
        (
            {"@merge": {"objects": [{"a": 1, "b": 1}, {"b": 2}], "direction": "right"}},
            {"a": 1, "b": 2},
        ),
        (
            {"@merge": {"objects": [{"a": 1, "b": 1}, {"b": 2}], "direction": "left"}},
            {"a": 1, "b": 1},
        ),
        (
            {"@flatten": {"value": {"@path": "$.context"}, "separator": "_"}},
            {"page_path": "/checkout"},
        ),
        ({"@excludeWhenNull": {"@path": "$.properties.coupon"}}, ABSENT),
        (
            {
                "id": {"@path": "$.messageId"},
                "gone": {"@path": "$.nope"},
                "kept": None,
                "n": [1, {"@path": "$.nope"}],
            },
            {"id": "m1", "kept": None, "n": [1, None]},  # as JSON.stringify writes undefined
        ),
    ],
)
def test_evaluate(mapping: Any, expected: Any) -> None:
    assert (
        evaluate(mapping, ORDER) == expected
        if expected is not ABSENT
        else evaluate(mapping, ORDER) is ABSENT
    )
    assert validate(mapping) == []


def test_lookup_walks_as_javascript_does() -> None:
    assert lookup(ORDER, "$.event.length") == len("Order Completed")
    assert lookup(ORDER, "$.properties.products[5]") is ABSENT
    assert lookup(ORDER, "$.properties.coupon.code") is None  # null && ... is null
    assert lookup(ORDER, "$.properties['order_id']") == "o-1"


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({"@pth": "$.x"}, "mapping: unknown directive @pth"),
        ({"@path": "$.x", "extra": 1}, "mapping: should only have one @-prefixed key"),
        ({"a": {"@path": 3}}, "mapping.a.@path: should be a string or a mapping directive"),
        ({"@case": {"operator": 1, "value": "x"}}, "mapping.@case.operator: should be a string"),
        ({"@if": {"then": {"@nope": 1}}}, "mapping.@if.then: unknown directive @nope"),
        ({"@replace": {"value": "x"}}, "mapping.@replace: should have field 'pattern'"),
        ({"@replace": {"value": "x", "pattern": "x" * 11}}, "mapping.@replace.pattern: should be"),
        ({"@arrayPath": "$.p"}, "mapping.@arrayPath: should be an array"),
        (
            {"@json": {"mode": "encode", "value": {"@nope": 1}}},
            "mapping.@json.value: unknown directive @nope",
        ),
        ({"@merge": {"objects": [1]}}, "mapping.@merge.objects[0]: should be a object or"),
        ({"@flatten": {"separator": "."}}, "mapping.@flatten: should have field 'value'"),
        ({"@liquid": 3}, "mapping.@liquid: should be a string but it is a number"),
    ],
)
def test_validate_names_the_place(mapping: Any, problem: str) -> None:
    assert any(p.startswith(problem) for p in validate(mapping)), validate(mapping)


def test_lists_are_checked_when_mapped_as_segment_does() -> None:
    assert validate({"list": [{"@template": 1}]}) == []
    with pytest.raises(MappingError, match="@template: expected string"):
        evaluate({"list": [{"@template": 1}]}, ORDER)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ properties }}", "[object Object]"),  # liquidjs writes objects so
        ("{{ properties.products | size }}", "2"),
        ("{{ properties.total | plus: 2.5 }}", "30"),  # numbers as JavaScript writes them
        ("{{ traits.first_name | downcase | append: '!' }}", "ada!"),
        ("{{ nothing }}|{{ properties.coupon }}", "|"),
        ("{{ event | nosuch }}", "Order Completed"),  # liquidjs ignores unknown filters
        ("", ""),
    ],
)
def test_liquid(template: str, expected: str) -> None:
    assert evaluate({"@liquid": template}, ORDER) == expected


def test_liquid_refuses_what_segment_refuses() -> None:
    with pytest.raises(MappingError, match=r'^filter "sort" is disabled'):
        evaluate({"@liquid": "{{ properties.products | sort }}"}, ORDER)
    with pytest.raises(MappingError, match=r"^liquid template values are limited to 1000"):
        evaluate({"@liquid": "x" * 1001}, ORDER)
    with pytest.raises(MappingError, match=r'^tag "tablerow" is disabled'):
        evaluate({"@liquid": "{% tablerow p in x %}{% endtablerow %}"}, ORDER)


@pytest.mark.parametrize(
    "mapping",
    [
        # Segment accepts these when the mapping is saved and fails each message they reach.
        {"@if": {"then": 1}},
        {"@merge": {"objects": [{}]}},
        {"@flatten": {"value": {}}},
        {"@case": {"operator": "title", "value": "x"}},
        {"@liquid": "{% for x in y %}{% endfor %}"},
    ],
)
def test_failures_found_only_while_mapping(mapping: Any) -> None:
    assert validate(mapping) == []
    with pytest.raises(MappingError):
        evaluate(mapping, ORDER)


def test_undefined_is_kept_until_the_end_as_in_javascript() -> None:
    cleared = {"@merge": {"direction": "right", "objects": [{"x": 1}, {"x": {"@path": "$.no"}}]}}
    assert evaluate(cleared, ORDER) == {}
    assert evaluate({"@json": {"mode": "encode", "value": {"b": 1, "1": 2, "0": 3}}}, ORDER) == (
        '{"0":3,"1":2,"b":1}'  # JavaScript's key order
    )


def test_warnings_name_what_fails_every_message() -> None:
    mapping = {
        "a": {"@merge": {"objects": []}},
        "b": [{"@liquid": "{% for x in y %}{% endfor %}"}],
        "c": {"@if": {"then": 1}},
        "fine": {"@merge": {"direction": "left", "objects": []}},
    }
    assert validate(mapping) == []
    assert kit_warnings(mapping) == [
        "mapping.a.@merge: needs 'direction'",
        'mapping.b[0].@liquid: tag "for" is disabled',
        "mapping.c.@if: needs 'exists' or 'blank'",
    ]


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1e21, "1e+21"),
        (1.5e21, "1.5e+21"),
        (1e-7, "1e-7"),
        (123456789012345680000.0, "123456789012345680000"),
        (2.5e-5, "0.000025"),
        (100.0, "100"),
        (-0.000001, "-0.000001"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_numbers_are_written_as_javascript_writes_them(number: float, text: str) -> None:
    assert evaluate({"@template": "{{n}}"}, {"n": number}) == text
    assert evaluate({"@json": {"mode": "encode", "value": {"@path": "$.n"}}}, {"n": number}) == text
