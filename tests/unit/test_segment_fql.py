"""Segment's own subscription (FQL) test cases, ported as data in
tests/data/segment/destination-subscriptions.json (which names the upstream files), run through
both of cdpd's evaluators: Python (`fql.matches`) and the SQL the router selects with
(`actions.subscription_sql`) on a real SQLite `messages` table of the outbox's shape."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cdpd.destinations.actions import Action, subscription_sql
from cdpd.mapping import fql
from cdpd.outbox import schema

DOCUMENT = json.loads(
    (
        Path(__file__).parent.parent / "data" / "segment" / "destination-subscriptions.json"
    ).read_text()
)


def _evaluate_groups() -> list[Any]:
    """validate.test.ts assertions grouped by their FQL: [(message, answer), ...]."""
    groups: dict[str, list[tuple[dict[str, Any], bool]]] = defaultdict(list)
    names: dict[str, str] = {}
    for case in DOCUMENT["evaluate"]:
        groups[case["fql"]].append((case["message"], case["matches"]))
        names.setdefault(case["fql"], case["name"])
    return [pytest.param(fql_text, cases, id=f"{names[fql_text]}: {fql_text}")
            for fql_text, cases in groups.items()]  # fmt: skip


def _parse_cases(parses: bool) -> list[Any]:
    return [
        pytest.param(case, id=f"{case['upstream']}: {case['name']}: {case['fql']}")
        for case in DOCUMENT["parse"]
        if case["parses"] is parses
    ]


@pytest.mark.parametrize(("text", "cases"), _evaluate_groups())
def test_validate_cases(text: str, cases: list[tuple[dict[str, Any], bool]]) -> None:
    _agree(text, cases)


@pytest.mark.parametrize("case", _parse_cases(True))
def test_parsed_cases_on_probe_messages(case: dict[str, Any]) -> None:
    _agree(case["fql"], [(probe["message"], probe["matches"]) for probe in case["probes"]])


@pytest.mark.parametrize("case", _parse_cases(False))
def test_rejected_cases(case: dict[str, Any]) -> None:
    with pytest.raises(fql.FqlError):
        fql.parse(case["fql"])


def test_every_upstream_case_is_ported_or_explained() -> None:
    assert len(DOCUMENT["evaluate"]) + len(DOCUMENT["parse"]) > 150
    assert all(entry["reason"] for entry in DOCUMENT["not_applicable"])


def _agree(text: str, cases: list[tuple[dict[str, Any], bool]]) -> None:
    node = fql.parse(text)
    expected = [answer for _, answer in cases]
    in_python = [fql.matches(node, message) for message, _ in cases]
    assert in_python == expected, [
        m for (m, _), a, e in zip(cases, in_python, expected, strict=True) if a != e
    ]
    in_sql = _sql_matches(node, text, [message for message, _ in cases])
    assert in_sql == expected, [
        m for (m, _), a, e in zip(cases, in_sql, expected, strict=True) if a != e
    ]


def _type_column(message: Any) -> str:
    kind = message.get("type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) else "\0"


def _sql_matches(node: fql.Node, text: str, messages: list[dict[str, Any]]) -> list[bool]:
    action = Action(
        name="a", kind="send", subscribe=text, subscription=node, mapping={}, required=(),
        whole_message=False,
    )  # fmt: skip
    condition, params = subscription_sql([action])
    with sqlite3.connect(":memory:") as conn:
        for migration in schema.MIGRATIONS:
            conn.executescript(migration)
        conn.executemany(
            "INSERT INTO messages (seq, message_id, source, type, received_at, payload)"
            " VALUES (?, ?, 'web', ?, '2026-01-01T00:00:00.000Z', ?)",
            # The type column holds the message's type, as ingest stores it (NUL for a message
            # without a text type, which ingest never stores).
            [
                (seq, f"m{seq}", _type_column(m), msgspec.json.encode(m).decode())
                for seq, m in enumerate(messages)
            ],
        )
        chosen = {
            seq for (seq,) in conn.execute(f"SELECT seq FROM messages WHERE {condition}", params)
        }
    return [seq in chosen for seq in range(len(messages))]


RANDOM = json.loads(
    (
        Path(__file__).parent.parent / "data" / "segment" / "destination-subscriptions-random.json"
    ).read_text()
)


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case["fql"][:90]) for case in RANDOM["cases"]]
)
def test_random_subscriptions_as_segments_code_answers(case: dict[str, Any]) -> None:
    _agree(case["fql"], [(probe["message"], probe["matches"]) for probe in case["probes"]])
