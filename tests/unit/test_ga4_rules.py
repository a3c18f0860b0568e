"""GA4's naming and value rules, and how a batch is cut into requests."""

from __future__ import annotations

from typing import Any

import pytest

from cdpd.destinations import ga4
from cdpd.destinations import ga4_rules as rules


@pytest.mark.parametrize(
    ("raw", "lowercase", "name"),
    [
        ("Order Completed", True, "order_completed"),
        ("Order Completed", False, "Order_Completed"),
        ("  Signed up -- via SSO! ", True, "signed_up_via_sso"),
        ("already_snake", True, "already_snake"),
    ],
)
def test_event_names_are_mended(raw: str, lowercase: bool, name: str) -> None:
    assert rules.event_name(raw, lowercase=lowercase) == name


@pytest.mark.parametrize(
    "raw", ["", "!!!", "3d view", "google_thing", "Firebase Thing", "screen_view", "x" * 41]
)
def test_event_names_that_cannot_be_mended(raw: str) -> None:
    with pytest.raises(rules.Invalid):
        rules.event_name(raw, lowercase=True)


def test_parameters_are_flattened_and_cut() -> None:
    made = rules.params(
        {
            "a b": "x" * 120,
            "page_location": "u" * 1200,
            "flag": False,
            "none": None,
            "nested": {"deep": {"er": 1}},
            "items": [{"item_id": "i", "extra": None, "price": 2}],
        }
    )
    assert made == {
        "a_b": "x" * 100,
        "page_location": "u" * 1000,
        "flag": "false",
        "nested_deep_er": 1,
        "items": [{"item_id": "i", "price": 2}],
    }


@pytest.mark.parametrize(
    "values",
    [
        {"items": [{"price": 1}]},
        {"items": [{"item_id": "i", "tags": ["a"]}]},
        {"ga_session_number": 1},
        {"1st": 1},
    ],
)
def test_parameters_that_cannot_be_mended(values: dict[str, Any]) -> None:
    with pytest.raises(rules.Invalid):
        rules.params(values)


def test_user_properties() -> None:
    assert rules.user_properties({"plan": "p" * 40, "seats": 3, "gone": None}) == {
        "plan": {"value": "p" * 36},
        "seats": {"value": 3},
    }
    for bad in ({"user_id": "u"}, {"a_very_long_user_property_name": 1}, {"tags": ["a"]}):
        with pytest.raises(rules.Invalid):
            rules.user_properties(bad)


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        ("2026-12-01T10:00:00.123Z", 1_796_119_200_123_000),
        (1_796_119_200, 1_796_119_200_000_000),
        (1_796_119_200_123, 1_796_119_200_123_000),
        (1_796_119_200_123_456, 1_796_119_200_123_456),
        ("not a time", None),
    ],
)
def test_timestamps_become_microseconds(value: Any, micros: int | None) -> None:
    assert ga4.timestamp_micros(value) == micros


def test_requests_are_cut_at_25_events_and_130_kb() -> None:
    fields: dict[str, Any] = {"client_id": "c", "name": "Big", "engagement_time_msec": 1}
    small = [(n, ga4.event_of("custom_event", fields)) for n in range(60)]
    assert [len(chunk) for chunk in ga4._chunks(small)] == [25, 25, 10]
    many_items = [{"item_id": f"{n:05d}", "item_name": "n" * 90} for n in range(200)]
    big = ga4.event_of("custom_event", {**fields, "params": {"items": many_items}})
    chunks = ga4._chunks([(n, big) for n in range(20)])
    assert all(
        rules.body_bytes(ga4.request_body([e for _, e in chunk])) < rules.MAX_BODY_BYTES
        for chunk in chunks
    )
    assert sum(len(chunk) for chunk in chunks) == 20
    assert len(chunks) > 1


def test_long_ids_count_towards_the_130_kb() -> None:
    """The client and user ids are part of the body GA4 measures (it drops a larger one)."""
    fields: dict[str, Any] = {
        "client_id": "c" * 300,
        "user_id": "u" * 256,
        "name": "Big",
        "engagement_time_msec": 1,
    }
    for count in range(100, 200):
        items = [{"item_id": f"{n:05d}", "item_name": "n" * 90} for n in range(count)]
        event = ga4.event_of("custom_event", {**fields, "params": {"items": items}})
        for chunk in ga4._chunks([(n, event) for n in range(25)]):
            body = ga4.request_body([e for _, e in chunk])
            assert rules.body_bytes(body) < rules.MAX_BODY_BYTES, count


def test_validation_messages_name_events_or_all() -> None:
    body = (
        b'{"validationMessages": [{"fieldPath": "events[1].params.currency",'
        b' "description": "Unknown currency [XYZ].", "validationCode": "VALUE_INVALID"}]}'
    )
    assert ga4.validation_messages(body, 3) == {1: "VALUE_INVALID: Unknown currency [XYZ]."}
    general = b'{"validationMessages": [{"fieldPath": "client_id", "description": "required",'
    general += b' "validationCode": "VALUE_REQUIRED"}]}'
    assert ga4.validation_messages(general, 2) == {
        0: "VALUE_REQUIRED: required",
        1: "VALUE_REQUIRED: required",
    }
    assert ga4.validation_messages(b'{"validationMessages": []}', 2) == {}
