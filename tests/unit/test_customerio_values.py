"""Values as Customer.io takes them."""

from __future__ import annotations

import re

import pytest

from cdpd.destinations import customerio_values as values

ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def test_event_ids_become_stable_ulids_that_carry_the_event_time() -> None:
    made = values.event_ulid("4a7f6e2d-0b2c-4b5e-9a8f-1c2d3e4f5a6b", "2015-02-23T22:29:10.000Z")
    assert ULID.match(made)
    assert made == values.event_ulid(
        "4a7f6e2d-0b2c-4b5e-9a8f-1c2d3e4f5a6b", "2015-02-23T22:29:10.000Z"
    )
    assert made != values.event_ulid("another", "2015-02-23T22:29:10.000Z")
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    millis = 0
    for char in made[:10]:
        millis = millis * 32 + alphabet.index(char)
    assert millis == 1424730550000
    assert values.event_ulid("01JEB3ZK8Q4V6W1N2P3R5T7X9Y", None) == "01JEB3ZK8Q4V6W1N2P3R5T7X9Y"
    assert ULID.match(values.event_ulid("m1", None))


@pytest.mark.parametrize(
    ("value", "converted"),
    [
        ("2015-02-01T00:00:00.000Z", 1422748800),
        ("2015-02-01", 1422748800),
        ("2015-02-01T02:00:00+02:00", 1422748800),
        ("1422748800", "1422748800"),
        ("next tuesday", "next tuesday"),
        (5, 5),
    ],
)
def test_iso_times_become_unix_seconds(value: object, converted: object) -> None:
    assert values.unix_s(value) == converted


def test_nested_attributes_are_converted() -> None:
    assert values.convert_timestamps({"a": {"at": "2015-02-01"}, "list": ["2015-02-01"]}) == {
        "a": {"at": 1422748800},
        "list": ["2015-02-01"],
    }


@pytest.mark.parametrize(
    ("person", "identifiers"),
    [
        ("cio_abc", {"cio_id": "abc"}),
        ("peter@example.com", {"email": "peter@example.com"}),
        ("97980cfea0067", {"id": "97980cfea0067"}),
    ],
)
def test_identifiers(person: str, identifiers: dict[str, str]) -> None:
    assert values.identifiers(person) == identifiers


def test_reasons_from_v1_and_v2_answers() -> None:
    assert values.reason_of(b'{"meta":{"error":"name cannot be blank"}}') == "name cannot be blank"
    v2 = b'{"errors":[{"reason":"required","field":"identifiers","message":"needed"}]}'
    assert values.reason_of(v2) == "needed"
    assert values.reason_of(b"<html>bad gateway</html>") is None
