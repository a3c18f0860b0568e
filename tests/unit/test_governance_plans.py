"""Loading tracking plans: Segment's rule format, Typewriter's plan.json, and errors that name
the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdpd.governance import plans
from cdpd.governance.plans import PlanError
from tests.governance_plans import PLAN, write_plan


def test_rule_format_loads_with_versions_oldest_first(tmp_path: Path) -> None:
    plan = plans.load("main", write_plan(tmp_path / "plan.json"))
    assert plan.track_events() == ["Order Completed", "Signed Up"]
    assert plan.rule("TRACK", "Order Completed").version == 1  # type: ignore[union-attr]
    assert plan.rule("TRACK", "Order Completed", 2).version == 2  # type: ignore[union-attr]
    # A version the plan lacks, or one that is not an integer: the oldest.
    assert plan.rule("TRACK", "Order Completed", 7).version == 1  # type: ignore[union-attr]
    assert plan.rule("TRACK", "Order Completed", "2").version == 1  # type: ignore[union-attr]
    assert plan.rule("TRACK", "order completed") is None  # names match exactly
    identify = plan.rule("IDENTIFY", None)
    assert identify is not None
    assert identify.planned == {"email", "age"}


def test_typewriter_plan_json_loads(tmp_path: Path) -> None:
    document = {
        "name": "workspaces/w/tracking-plans/rs_1",
        "display_name": "Web",
        "rules": {
            "events": [
                {
                    "name": "Song Played",
                    "version": 1,
                    "rules": {
                        "type": "object",
                        "properties": {"properties": {"properties": {"title": {}}}},
                    },
                }
            ],
            "identify": {"type": "object"},
            "global": {"type": "object"},
        },
    }
    plan = plans.load("tw", write_plan(tmp_path / "plan.json", document))
    assert plan.track_events() == ["Song Played"]
    assert plan.rule("TRACK", "Song Played").planned == {"title"}  # type: ignore[union-attr]
    assert plan.rule("COMMON", None) is not None
    assert plan.rule("IDENTIFY", None) is not None


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [{"type": "TRACK", "key": "A", "jsonSchema": {"type": "bogus"}}],
            "rules[0] (TRACK 'A'): jsonSchema is not a valid JSON Schema",
        ),
        ([{"type": "TRACK", "jsonSchema": {}}], "rules[0] (TRACK): a TRACK rule needs a `key`"),
        (
            [{"type": "IDENTIFY", "key": "x", "jsonSchema": {}}],
            "rules[0] (IDENTIFY 'x'): a IDENTIFY rule has no `key`",
        ),
        ([{"type": "ALIAS"}], "rules[0] (ALIAS): type: Invalid enum value 'ALIAS'"),
        (
            [{"type": "TRACK", "key": "A"}, {"type": "TRACK", "key": "A"}],
            "rules[1] (TRACK 'A'): version 1 is given twice",
        ),
        (
            [{"type": "TRACK", "key": "A", "version": "one"}],
            "rules[0] (TRACK 'A'): version: Expected `int`, got `str`",
        ),
    ],
)
def test_a_bad_rule_is_named(tmp_path: Path, rules: list[object], message: str) -> None:
    with pytest.raises(PlanError) as caught:
        plans.load("main", write_plan(tmp_path / "plan.json", {"rules": rules}))
    assert f"tracking plan 'main' ({tmp_path / 'plan.json'}): {message}" in str(caught.value)


def test_unreadable_and_shapeless_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read the file"):
        plans.load("main", tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanError, match="not valid JSON"):
        plans.load("main", tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(PlanError, match="expected an object with a `rules` list"):
        plans.load("main", tmp_path / "list.json")


def test_the_shared_plan_is_what_the_tests_think() -> None:
    assert len(PLAN["rules"]) == 4


def test_each_rule_is_checked_by_its_own_draft(tmp_path: Path) -> None:
    """draft-04 writes an exclusive maximum as a boolean next to `maximum`; later drafts as a
    number of its own."""
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "properties": {
            "properties": {"properties": {"n": {"maximum": 5, "exclusiveMaximum": True}}}
        },
    }
    draft7 = {"properties": {"properties": {"properties": {"n": {"exclusiveMaximum": 5}}}}}
    rules = [
        {"type": "TRACK", "key": "Four", "jsonSchema": draft4},
        {"type": "TRACK", "key": "Seven", "jsonSchema": draft7},
    ]
    plan = plans.load("main", write_plan(tmp_path / "plan.json", {"rules": rules}))
    for key in ("Four", "Seven"):
        rule = plan.rule("TRACK", key)
        assert rule is not None
        assert rule.validator.is_valid({"properties": {"n": 4}})
        assert not rule.validator.is_valid({"properties": {"n": 5}})
