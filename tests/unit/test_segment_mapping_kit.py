"""Segment's own mapping-kit test cases (ported as data under tests/data/segment/, each file
naming the upstream file it comes from) run against cdpd's mapping-kit."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cdpd.mapping import kit

DATA = Path(__file__).parent.parent / "data" / "segment"
TRANSFORM_FILES = (
    "mapping-kit-index.json",
    "mapping-kit-liquid.json",
    "mapping-kit-placeholders.json",
    "mapping-kit-flatten.json",
)


def _cases(name: str, key: str = "cases") -> list[Any]:
    document = json.loads((DATA / name).read_text())
    return [
        pytest.param(case, id=f"{name.removesuffix('.json')}: {case['name']} #{index}")
        for index, case in enumerate(document[key])
    ]


@pytest.mark.parametrize("case", [c for name in TRANSFORM_FILES for c in _cases(name)])
def test_transform(case: dict[str, Any]) -> None:
    if case.get("raises"):
        with pytest.raises(kit.MappingError) as raised:
            kit.transform(case["mapping"], case["payload"])
        expected = case.get("upstream_error", "")
        if expected.startswith("re:"):  # the upstream test names the message: so must we
            message = str(raised.value)
            said = [message] + [p.split(": ", 1)[-1] for p in message.split("; ")]
            assert any(re.search(expected[3:], text) for text in said), message
        return
    output = kit.transform(case["mapping"], case["payload"])
    if "raises" in case:  # the upstream test only says it does not throw
        return
    if case.get("absent"):
        assert output is kit.ABSENT
    else:
        assert output == case["output"]
        assert _kinds(output) == _kinds(case["output"])  # 1 is not True, "1" is not 1


@pytest.mark.parametrize("case", _cases("mapping-kit-schema-fixtures.json"))
def test_schema_fixture(case: dict[str, Any]) -> None:
    problems = kit.validate(case["mapping"], "mapping")
    if case["valid"]:
        assert problems == []
        return
    expected = case["upstream_error"]
    for error in expected if isinstance(expected, list) else [expected]:
        place = error.split(" ", 1)[0]  # "/@replace/pattern" names where the problem is
        where = "mapping" + "".join(f".{part}" for part in place.split("/") if part)
        assert any(p.startswith(f"{where}: ") for p in problems), (where, problems)


def _kinds(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _kinds(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_kinds(inner) for inner in value]
    return type(value).__name__.replace("int", "number").replace("float", "number")


def _liquid_cases() -> list[Any]:
    params = []
    for name in ("liquid-engine.json", "liquid-random.json"):
        document = json.loads((DATA / name).read_text())
        params += [
            pytest.param(document["payload"], case, id=f"{name}: {case['template'][:80]}")
            for case in document["cases"]
        ]
    return params


@pytest.mark.parametrize(("payload", "case"), _liquid_cases())
def test_liquid_renders_as_segments_engine(payload: dict[str, Any], case: dict[str, Any]) -> None:
    if case.get("raises"):
        with pytest.raises(kit.MappingError):
            kit.transform({"@liquid": case["template"]}, payload)
    else:
        assert kit.transform({"@liquid": case["template"]}, payload) == case["output"]


def _random_cases() -> list[Any]:
    document = json.loads((DATA / "mapping-kit-random.json").read_text())
    return [
        pytest.param(case, id=f"random #{index}") for index, case in enumerate(document["cases"])
    ]


@pytest.mark.parametrize("case", _random_cases())
def test_random_mapping_as_segments_code_maps_it(case: dict[str, Any]) -> None:
    if case.get("raises"):
        with pytest.raises(kit.MappingError):
            kit.transform(case["mapping"], case["payload"])
        return
    output = kit.transform(case["mapping"], case["payload"])
    if case.get("absent"):
        assert output is kit.ABSENT
    else:  # the same JSON, byte for byte (JavaScript's key order included)
        assert msgspec.json.encode(output) == msgspec.json.encode(case["output"])
