"""The Protocols processor on its own: violations in Segment's words, omission and blocking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from cdpd.config import SourceProtocols, TrackProtocols, TraitProtocols
from cdpd.governance import plans
from cdpd.governance.chain import Block, Findings, Message
from cdpd.governance.protocols import Protocols
from cdpd.governance.schema_observer import SchemaCounts
from cdpd.model.rows import OutboxRow
from tests.governance_plans import COMMON_DEVICE, PLAN, write_plan


def _row(body: dict[str, Any]) -> OutboxRow:
    kind = body.get("type", "track")
    return OutboxRow(
        message_id=body.get("messageId", "m-1"),
        source="website",
        type=kind,
        event=body.get("event") if kind == "track" else body.get("name"),
        user_id="u-1",
        anonymous_id=None,
        received_at="2026-12-06T20:00:00.000Z",
        payload=msgspec.json.encode({"type": kind, **body}).decode(),
    )


@pytest.fixture
def plan(tmp_path: Path) -> plans.Plan:
    return plans.load("main", write_plan(tmp_path / "plan.json"))


def run(
    plan: plans.Plan, body: dict[str, Any], settings: SourceProtocols | None = None
) -> tuple[Any, dict[str, Any], Findings]:
    processor = Protocols("website", plan, settings or SourceProtocols())
    message = Message(_row(body))
    findings = Findings()
    verdict = processor(message, findings)
    return verdict, msgspec.json.decode(message.finish().payload), findings


def track(settings: TrackProtocols) -> SourceProtocols:
    return SourceProtocols(track=settings)


def test_a_clean_message_is_left_as_it_came(plan: plans.Plan) -> None:
    body = {"event": "Order Completed", "properties": {"order_id": "o1", "revenue": 9.5}}
    verdict, out, findings = run(plan, body)
    assert verdict is None
    assert "context" not in out
    assert findings.violations == []


@pytest.mark.parametrize(
    ("properties", "violation"),
    [
        (
            {"revenue": 1},
            {
                "type": "Required",
                "field": "properties.order_id",
                "description": "properties.order_id is required",
            },
        ),
        (
            {"order_id": "o", "revenue": "12"},
            {
                "type": "Invalid Type",
                "field": "properties.revenue",
                "description": "Invalid type. Expected: number, given: string",
            },
        ),
        (
            {"order_id": 7},
            {
                "type": "Invalid Type",
                "field": "properties.order_id",
                "description": "Invalid type. Expected: string, given: integer",
            },
        ),
        (
            {"order_id": "o", "coupon": 5},
            {
                "type": "Invalid Type",
                "field": "properties.coupon",
                "description": "Invalid type. Expected: [string,null], given: integer",
            },
        ),
        (
            {"order_id": "o", "currency": "GBP"},
            {
                "type": "Enum",
                "field": "properties.currency",
                "description": 'properties.currency must be one of the following: "EUR", "USD"',
            },
        ),
        (
            {"order_id": "o", "coupon": "abc"},
            {
                "type": "Pattern",
                "field": "properties.coupon",
                "description": "Does not match pattern '^[A-Z]+$'",
            },
        ),
        (
            {"order_id": "o", "gift": True},
            {
                "type": "Unplanned Property",
                "field": "properties.gift",
                "description": "properties.gift is not planned",
            },
        ),
    ],
)
def test_each_violation_kind_in_segments_words(
    plan: plans.Plan, properties: dict[str, Any], violation: dict[str, str]
) -> None:
    verdict, out, findings = run(plan, {"event": "Order Completed", "properties": properties})
    assert verdict is None
    protocols = out["context"]["protocols"]
    assert protocols["violations"] == [violation]
    assert protocols["omitted"] == []
    assert protocols["omitted_on_violation"] == []
    assert protocols["sourceId"] == "website"
    assert [(v.violation_type, v.field, v.description) for v in findings.violations] == [
        (violation["type"], violation["field"], violation["description"])
    ]
    assert out["properties"] == properties  # allowed: nothing removed


def test_a_fraction_is_not_an_integer_but_a_whole_float_is(plan: plans.Plan) -> None:
    body = {"event": "Order Completed", "properties": {"order_id": 1.5}}
    _, out, _ = run(plan, {**body, "context": {"protocols": {"event_version": 2}}})
    (violation,) = out["context"]["protocols"]["violations"]
    assert violation["description"] == "Invalid type. Expected: integer, given: number"
    assert out["context"]["protocols"]["event_version"] == 2  # the sender's keys stay
    _, out, _ = run(plan, {"event": "Order Completed", "properties": {"order_id": 3}})
    assert out["context"]["protocols"]["violations"][0]["description"].endswith("given: integer")


def test_versions_choose_the_rule_and_missing_or_invalid_ones_the_oldest(
    plan: plans.Plan,
) -> None:
    body: dict[str, Any] = {"event": "Order Completed", "properties": {"order_id": 5}}
    _, out, _ = run(plan, {**body, "context": {"protocols": {"event_version": 2}}})
    assert out["context"]["protocols"] == {"event_version": 2}  # v2 wants an integer: clean
    for version in (None, "2", 9):
        context = {"protocols": {"event_version": version}}
        _, out, _ = run(plan, {**body, "context": context})
        assert out["context"]["protocols"]["violations"][0]["type"] == "Invalid Type"


def test_unplanned_events_are_recorded_and_blocked_when_asked(plan: plans.Plan) -> None:
    body = {"event": "order completed", "properties": {}}
    verdict, out, findings = run(plan, body)
    assert verdict is None
    assert out["context"]["protocols"]["violations"] == [
        {
            "type": "Unplanned Event",
            "field": "event",
            "description": "Event order completed is not planned",
        }
    ]
    verdict, _, findings = run(plan, body, track(TrackProtocols(allowUnplannedEvents=False)))
    assert verdict == Block("unplanned_event", "'order completed' is not in the tracking plan")
    assert findings.violations[0].blocked == 1


def test_unplanned_properties_are_omitted_by_name(plan: plans.Plan) -> None:
    body = {"event": "Order Completed", "properties": {"order_id": "o", "gift": "x", "n": 1}}
    settings = track(TrackProtocols(allowUnplannedEventProperties=False))
    verdict, out, _ = run(plan, body, settings)
    assert verdict is None
    assert out["properties"] == {"order_id": "o"}
    assert out["context"]["protocols"]["omitted"] == ["gift", "n"]


def test_only_failing_values_are_omitted_and_required_omits_nothing(plan: plans.Plan) -> None:
    body = {"event": "Order Completed", "properties": {"revenue": "12", "currency": "EUR"}}
    settings = track(TrackProtocols(allowPropertiesOnViolations=False))
    verdict, out, _ = run(plan, body, settings)
    assert verdict is None
    assert out["properties"] == {"currency": "EUR"}
    protocols = out["context"]["protocols"]
    assert protocols["omitted_on_violation"] == ["revenue"]
    assert [v["type"] for v in protocols["violations"]] == ["Required", "Invalid Type"]


def test_violations_block_the_event_when_asked(plan: plans.Plan) -> None:
    body = {"event": "Order Completed", "properties": {"order_id": 1}}
    verdict, _, _ = run(plan, body, track(TrackProtocols(allowEventOnViolations=False)))
    assert isinstance(verdict, Block)
    assert verdict.code == "violations"


def test_traits_are_checked_for_identify(plan: plans.Plan) -> None:
    body = {"type": "identify", "traits": {"email": 5, "age": 3, "plan": "pro"}}
    settings = SourceProtocols(
        identify=TraitProtocols(allowUnplannedTraits=False, allowTraitsOnViolations=False)
    )
    verdict, out, _ = run(plan, body, settings)
    assert verdict is None
    assert out["traits"] == {"age": 3}
    protocols = out["context"]["protocols"]
    assert protocols["omitted"] == ["plan"]
    assert protocols["omitted_on_violation"] == ["email"]
    assert [(v["type"], v["field"]) for v in protocols["violations"]] == [
        ("Unplanned Trait", "traits.plan"),
        ("Invalid Type", "traits.email"),
    ]


def test_the_common_schema_is_checked_after_and_can_block(tmp_path: Path) -> None:
    plan = plans.load(
        "main", write_plan(tmp_path / "p.json", {"rules": [*PLAN["rules"], COMMON_DEVICE]})
    )
    body = {"event": "Signed Up", "context": {"ip": "1.2.3.4"}}
    verdict, out, _ = run(plan, body)
    assert verdict is None
    assert out["context"]["protocols"]["violations"] == [
        {"type": "Required", "field": "context.app", "description": "context.app is required"}
    ]
    settings = track(TrackProtocols(commonEventOnViolations="BLOCK"))
    verdict, _, _ = run(plan, body, settings)
    assert isinstance(verdict, Block)
    assert verdict.code == "common_violations"
    # Alias messages meet only the common schema (with the track setting).
    verdict, out, _ = run(plan, {"type": "alias", "previousId": "a", "context": {}})
    assert out["context"]["protocols"]["violations"][0]["field"] == "context.app"
    verdict, out, _ = run(plan, {"type": "alias", "previousId": "a", "context": {}}, settings)
    assert isinstance(verdict, Block)


def test_pages_use_the_page_viewed_rule_and_are_never_blocked_as_unplanned(
    tmp_path: Path,
) -> None:
    rules = [{"type": "TRACK", "key": "Page Viewed", "jsonSchema": {"required": ["properties"]}}]
    plan = plans.load("main", write_plan(tmp_path / "p.json", {"rules": rules}))
    settings = track(TrackProtocols(allowUnplannedEvents=False))
    verdict, out, _ = run(plan, {"type": "page", "name": "Home"}, settings)
    assert verdict is None
    assert out["context"]["protocols"]["violations"][0]["description"] == "properties is required"
    verdict, out, _ = run(plan, {"type": "screen", "name": "Home"}, settings)
    assert verdict is None
    assert "context" not in out


def test_forwarding_makes_one_violation_generated_event_per_violation(plan: plans.Plan) -> None:
    settings = SourceProtocols(forwardingViolationsTo="violations")
    body = {"event": "Order Completed", "properties": {"revenue": "x"}, "messageId": "m-9"}
    _, _, findings = run(plan, body, settings)
    assert len(findings.forwarded) == 2
    first = msgspec.json.decode(findings.forwarded[0].payload)
    assert findings.forwarded[0].source == "violations"
    assert first["event"] == "Violation Generated"
    assert first["userId"] == "schema-violations"
    assert first["messageId"].startswith("sch-")
    assert first["forwardedFromProject"] == "website"
    assert first["properties"]["eventMessageID"] == "m-9"
    assert first["properties"]["violationType"] == "Required"
    assert first["properties"]["violationField"] == "properties.order_id"
    assert first["properties"]["trackingPlanName"] == "main"
    assert set(first["properties"]) == {
        "appVersion",
        "eventMessageID",
        "eventName",
        "eventSentAt",
        "eventTimestamp",
        "eventType",
        "sourceID",
        "sourceName",
        "sourceSlug",
        "trackingPlanID",
        "trackingPlanName",
        "violationDescription",
        "violationField",
        "violationType",
    }


def test_common_violations_can_omit_the_failing_properties_or_traits(tmp_path: Path) -> None:
    common = {
        "type": "COMMON",
        "jsonSchema": {
            "properties": {
                "properties": {"properties": {"email": {"type": "string"}}},
                "traits": {"properties": {"email": {"type": "string"}}},
            }
        },
    }
    plan = plans.load("main", write_plan(tmp_path / "p.json", {"rules": [common]}))
    settings = SourceProtocols(
        track=TrackProtocols(commonEventOnViolations="OMIT_PROPERTIES"),
        group=TraitProtocols(commonEventOnViolations="OMIT_TRAITS"),
    )
    verdict, out, _ = run(plan, {"event": "Any", "properties": {"email": 1, "n": 2}}, settings)
    assert verdict is None
    assert out["properties"] == {"n": 2}
    assert out["context"]["protocols"]["omitted_on_violation"] == ["email"]
    body = {"type": "group", "groupId": "g", "traits": {"email": 1, "n": 2}}
    verdict, out, _ = run(plan, body, settings)
    assert out["traits"] == {"n": 2}
    # Identify keeps the default (ALLOW): recorded, nothing omitted.
    verdict, out, _ = run(plan, {"type": "identify", "traits": {"email": 1}}, settings)
    assert out["traits"] == {"email": 1}
    assert out["context"]["protocols"]["violations"][0]["field"] == "traits.email"


def test_group_settings_apply_to_group_calls(tmp_path: Path) -> None:
    rule = {
        "type": "GROUP",
        "jsonSchema": {"properties": {"traits": {"properties": {"name": {"type": "string"}}}}},
    }
    plan = plans.load("main", write_plan(tmp_path / "p.json", {"rules": [rule]}))
    settings = SourceProtocols(group=TraitProtocols(allowUnplannedTraits=False))
    body = {"type": "group", "groupId": "g", "traits": {"name": "Initech", "size": 3}}
    _, out, _ = run(plan, body, settings)
    assert out["traits"] == {"name": "Initech"}
    assert out["context"]["protocols"]["omitted"] == ["size"]


def test_blocked_messages_can_be_forwarded_to_another_source(plan: plans.Plan) -> None:
    settings = SourceProtocols(
        track=TrackProtocols(allowUnplannedEvents=False), forwardingBlockedEventsTo="quarantine"
    )
    verdict, _, findings = run(plan, {"event": "Nope", "messageId": "m-5"}, settings)
    assert isinstance(verdict, Block)
    (forwarded,) = findings.forwarded
    assert (forwarded.source, forwarded.message_id, forwarded.event) == (
        "quarantine",
        "m-5",
        "Nope",
    )
    assert (
        msgspec.json.decode(forwarded.payload)["context"]["protocols"]["violations"][0]["type"]
        == "Unplanned Event"
    )


def test_schema_counts_sum_shapes_into_fields() -> None:
    counts = SchemaCounts()
    shape = ("web", "track", "Order", "properties", ("total",), ("integer",))
    other = ("web", "track", "Order", "properties", ("total", "coupon"), ("number", "null"))
    counts.add({shape: 2}, "2026-12-06T10:00:00.000Z")
    counts.add({other: 1, shape: 1}, "2026-12-06T11:00:00.000Z")
    rows = {row[:5]: row[5:] for row in counts.take_rows()}
    first, last = "2026-12-06T10:00:00.000Z", "2026-12-06T11:00:00.000Z"
    assert rows == {
        ("web", "track", "Order", "", ""): (4, first, last),
        ("web", "track", "Order", "properties.total", "integer"): (3, first, last),
        ("web", "track", "Order", "properties.total", "number"): (1, last, last),
        ("web", "track", "Order", "properties.coupon", "null"): (1, last, last),
    }
    assert counts.take_rows() == []
