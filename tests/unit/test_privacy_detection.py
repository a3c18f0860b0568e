"""The field detector (what the inbox is made of) and the controls by class, on messages
built here: shapes seen before cost no matching, new fields anywhere are found, last seen
moves, and block/hash act on the inventory's paths only."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from cdpd import config as cdpd_config
from cdpd.governance.chain import Findings
from cdpd.model.rows import OutboxRow
from cdpd.privacy import inbox
from cdpd.privacy.controls import Inventory, LiveControls, compile_controls, field_problem
from cdpd.privacy.inbox import FieldDetector
from cdpd.privacy.matchers import Matchers
from cdpd.privacy.scan import class_of, inspect


def row(body: dict[str, Any], at: str = "2026-12-06T10:00:00.000Z") -> OutboxRow:
    return OutboxRow(
        message_id="m",
        source="web",
        type=body.get("type", "track"),
        event="E",
        user_id="u",
        anonymous_id=None,
        received_at=at,
        payload=msgspec.json.encode(body).decode(),
    )


def rows_by_field(detector: FieldDetector) -> dict[str, tuple[Any, ...]]:
    return {r[1]: r for r in detector.take_rows()}


def message(email: str, page: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "properties": {"email": email, "total": 3},
        "context": {"library": {"name": "analytics.js"}, "page": page or {"path": "/"}},
    }


def test_a_shape_seen_before_is_not_matched_again() -> None:
    matchers = Matchers(cdpd_config.parse("").privacy)
    detector = FieldDetector("web", matchers)
    detector.observe_rows([row(message("jane@example.com"))], Findings())
    looked_up = matchers.for_key.cache_info()  # type: ignore[attr-defined]
    detector.observe_rows([row(message("bob@example.org", {"path": "/x"}))], Findings())
    assert matchers.for_key.cache_info() == looked_up  # type: ignore[attr-defined]
    found = rows_by_field(detector)
    assert found["properties.email"][2:5] == ("yellow", "email", "key")
    assert found["properties.email"][7] == "j***@*******.**m"  # the first sample stays


def test_new_fields_are_found_at_any_depth_and_last_seen_moves() -> None:
    detector = FieldDetector("web", Matchers(cdpd_config.parse("").privacy))
    detector.observe_rows([row(message("a@b.co"), "2026-12-06T10:00:00.000Z")], Findings())
    first = rows_by_field(detector)
    assert set(first) == {
        "properties.email",
        "properties.total",
        "context.library",
        "context.library.name",
        "context.page",
        "context.page.path",
    }
    assert detector.take_rows() == []  # nothing new since
    later = message("a@b.co", {"path": "/", "referrer": "x", "search": {"q": "jane@example.com"}})
    detector.observe_rows([row(later, "2026-12-06T11:00:00.000Z")], Findings())
    second = rows_by_field(detector)
    assert second["context.page.search.q"][2:5] == ("yellow", "email", "value")
    assert second["context.page.referrer"][5] == "2026-12-06T11:00:00.000Z"  # first seen
    # the library object repeats (it is not decoded again), yet its field was seen again
    assert second["context.library.name"][5:7] == (
        "2026-12-06T10:00:00.000Z",
        "2026-12-06T11:00:00.000Z",
    )


def test_sections_that_are_not_objects_are_skipped() -> None:
    detector = FieldDetector("web", Matchers(cdpd_config.parse("").privacy))
    detector.observe_rows([row({"type": "track", "properties": "nope"})], Findings())
    detector.observe_rows([row({"type": "identify", "traits": {"ssn": "123-45-6789"}})], Findings())
    assert list(rows_by_field(detector)) == ["traits.ssn"]


def sha(text: str, salt: str = "") -> str:
    return hashlib.sha256((salt + text).encode()).hexdigest()


def test_controls_block_and_hash_the_inventorys_paths() -> None:
    classes = {
        "properties.email": "yellow",
        "properties.card": "red",
        "context.traits": "yellow",
        "properties.tier": "green",
        "properties.missing": "red",
    }
    controls = compile_controls(classes, {"red": "block", "yellow": "hash"}, salt="s")
    body = {
        "properties": {"email": "a@b.co", "card": "4111", "tier": "gold", "n": None},
        "context": {"traits": {"name": "Jane"}},
    }
    assert controls.apply(body)
    assert body == {
        "properties": {"email": sha("a@b.co", "s"), "tier": "gold", "n": None},
        "context": {"traits": sha('{"name":"Jane"}', "s")},  # an object hashes as its JSON
    }
    assert not compile_controls(classes, {"green": "allow"})
    assert not compile_controls(classes, {"red": "block"}).apply({"properties": {"x": 1}})


def test_live_controls_follow_the_inventory() -> None:
    inventory = Inventory()
    controls = LiveControls(inventory, {"red": "block"})
    payload = '{"properties":{"card":"4111","x":1}}'
    assert controls.payload("web", payload) is payload  # nothing classified: the text itself
    inventory.classify("properties.card", "red")
    assert controls.payload("web", payload) == '{"properties":{"x":1}}'
    inventory.classify("properties.card", None)
    assert controls.payload("web", payload) is payload


def test_field_paths_and_scan_classes() -> None:
    assert field_problem("properties.email") is None
    assert field_problem("context.page.url") is None
    assert field_problem("email") is not None
    assert field_problem("properties.") is not None
    assert field_problem("integrations.x") is not None
    classes = {"context.traits": "red", "properties.a": "green"}
    assert class_of("context.traits.email", classes) == "red"
    assert class_of("properties.b", classes) is None
    body = {"properties": {"a": 1, "b": {"c": 2}}, "context": {"traits": {"e": "x"}}}
    assert inspect(body, classes) == (["context.traits.e"], ["properties.b.c"])


def test_keys_that_are_data_stay_bounded() -> None:
    detector = FieldDetector("web", Matchers(cdpd_config.parse("").privacy))
    many = [
        row({"type": "track", "properties": {f"k{i}": i}}) for i in range(inbox.MAX_FIELDS + 50)
    ]
    detector.observe_rows(many, Findings())
    assert len(detector.take_rows()) == inbox.MAX_FIELDS


def test_the_schema_observer_feeds_detection_from_its_own_decode() -> None:
    from cdpd.governance.chain import Message
    from cdpd.governance.schema_observer import SchemaObserver

    for shares_body in (False, True):  # decoded raw, or the whole body a plan decoded
        detector = FieldDetector("web", Matchers(cdpd_config.parse("").privacy))
        observer = SchemaObserver("web", shares_body=shares_body, fields=detector)
        findings = Findings()
        for at in ("2026-12-06T10:00:00.000Z", "2026-12-06T11:00:00.000Z"):
            observer(Message(row(message("a@b.co"), at)), findings)
        identify = {"type": "identify", "traits": {"phone": "+44 20 7946 0958"}, "context": None}
        observer(Message(row(identify)), findings)
        found = rows_by_field(detector)
        assert found["properties.email"][2] == "yellow"
        assert found["traits.phone"][2:5] == ("yellow", "phone", "key")
        assert found["context.library.name"][6] == "2026-12-06T11:00:00.000Z"  # last seen
        assert sum(findings.shapes.values()) == 3  # and the schema is counted as before
