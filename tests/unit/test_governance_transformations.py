"""Protocols Transformations: renaming events, renaming and moving properties and traits."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cdpd.config import ConfigError, PropertyRename, Transformation, parse
from cdpd.governance.chain import Findings, Message
from cdpd.governance.transformations import (
    DestinationTransformations,
    SourceTransformations,
    check,
)
from cdpd.model.rows import OutboxRow


def _transformation(**fields: Any) -> Transformation:
    return Transformation(name="t", source="website", **fields)


def _run(transformations: list[Transformation], body: dict[str, Any]) -> OutboxRow:
    kind = body["type"]
    row = OutboxRow(
        "m-1",
        "website",
        kind,
        body.get("event") if kind == "track" else body.get("name"),
        "u",
        None,
        "2026-12-06T00:00:00.000Z",
        msgspec.json.encode(body).decode(),
    )
    message = Message(row)
    assert SourceTransformations(transformations)(message, Findings()) is None
    return message.finish()


def test_rename_an_event_and_move_properties() -> None:
    transformation = _transformation(
        if_='event = "order_completed"',
        newEventName="Order Completed",
        propertyRenames=[
            PropertyRename(oldName="total", newName="revenue"),
            PropertyRename(oldName="shipping.city", newName="city"),
            PropertyRename(oldName="coupon", newName="discount.code"),
        ],
    )
    body = {
        "type": "track",
        "event": "order_completed",
        "properties": {"total": 5, "shipping": {"city": "Oslo", "zip": "0150"}, "coupon": "X"},
    }
    row = _run([transformation], body)
    assert row.event == "Order Completed"
    assert msgspec.json.decode(row.payload)["properties"] == {
        "revenue": 5,
        "shipping": {"zip": "0150"},
        "city": "Oslo",
        "discount": {"code": "X"},
    }


def test_messages_that_do_not_match_are_left_byte_for_byte() -> None:
    transformation = _transformation(if_='event = "Other"', newEventName="Renamed")
    body = {"type": "track", "event": "Kept", "properties": {"a": 1}}
    row = _run([transformation], body)
    assert row.payload == msgspec.json.encode(body).decode()


def test_traits_for_identify_and_names_for_pages() -> None:
    rename = _transformation(
        if_='type = "identify"', propertyRenames=[PropertyRename(oldName="mail", newName="email")]
    )
    row = _run([rename], {"type": "identify", "traits": {"mail": "a@b.c"}})
    assert msgspec.json.decode(row.payload)["traits"] == {"email": "a@b.c"}
    page = _transformation(if_='name = "home"', newEventName="Home")
    assert _run([page], {"type": "page", "name": "home"}).event == "Home"


def test_destination_transformations_change_only_the_copy() -> None:
    scoped = DestinationTransformations(
        [_transformation(if_='event = "a"', newEventName="A", destination="hook")]
    )
    stored = '{"type":"track","event":"a"}'
    assert msgspec.json.decode(scoped.payload("website", stored))["event"] == "A"
    assert scoped.payload("backend", stored) == stored


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"if_": "event ="}, "if: "),
        ({"if_": "type = \"track\""}, "the transformation changes nothing"),
        (
            {"if_": "type = \"track\"",
             "propertyRenames": [PropertyRename(oldName="a.b.c.d.e", newName="x")]},
            "propertyRenames[0].oldName: 'a.b.c.d.e' must be a dotted path of up to 4 names",
        ),
    ],
)  # fmt: skip
def test_check_names_the_problem(fields: dict[str, Any], problem: str) -> None:
    assert any(problem in found for found in check(_transformation(**fields)))


def test_config_validates_transformations() -> None:
    base = '[[sources]]\nname = "website"\nwrite_key = "k"\n'
    good = base + (
        '[[transformations]]\nname = "t"\nsource = "website"\nif = \'event = "a"\'\n'
        'newEventName = "A"\npropertyRenames = [{ oldName = "x", newName = "y" }]\n'
    )
    assert parse(good).transformations[0].if_ == 'event = "a"'
    with pytest.raises(ConfigError, match=r"transformations\[0\]\.source: no source"):
        parse(good.replace('source = "website"', 'source = "nope"'))
    with pytest.raises(ConfigError, match=r"transformations\[0\]\.destination: no destination"):
        parse(good + 'destination = "hook"\n')
