"""The JetStream backend's routing predicate decides exactly what the SQLite backend's SQL does:
every case runs through both (the SQL on a real `messages` table)."""

from __future__ import annotations

import itertools
import sqlite3
from typing import Any

import msgspec
import pytest

from cdpd.cluster.routing import Router
from cdpd.delivery.service import routing_rule
from cdpd.destinations import registry
from cdpd.destinations.settings import ActionConfig, WebhookDestination
from cdpd.model.rows import OutboxRow

MESSAGES: list[dict[str, Any]] = [
    {"type": "track", "event": "Signed Up", "userId": "u1"},
    {"type": "track", "event": "Order Completed", "properties": {"total": 30}},
    {"type": "track"},  # no event name
    {"type": "identify", "userId": "u2", "traits": {"plan": "pro"}},
    {"type": "page", "name": "Home"},
    {"type": "track", "event": "Signed Up", "integrations": {"All": False}},
    {"type": "track", "event": "Signed Up", "integrations": {"All": False, "hook": True}},
    {"type": "track", "event": "Signed Up", "integrations": {"hook": False}},
    {"type": "track", "event": "Signed Up", "integrations": {"Webhooks": False}},
    {"type": "track", "event": "Signed Up", "integrations": {"Webhooks": {"x": 1}}},
    {"type": "track", "event": "Signed Up", "integrations": {"hook": None, "All": False}},
    {"type": "track", "event": "Signed Up", "integrations": {"hook": 0}},
    {"type": "track", "event": "Signed Up", "integrations": {"hook": 0, "x": False}},
    {"type": "track", "event": "Signed Up", "integrations": {"hook": "false"}},
    {"type": "track", "event": "Signed Up", "integrations": {"hook": 0.0, "All": False}},
    {"type": "track", "event": "false", "integrations": "All"},
    {"type": "track", "event": "x", "properties": {"flag": False}},
    {"type": "group", "groupId": "g1", "integrations": {"All": True, "hook": False}},
]

RULES: list[dict[str, Any]] = [
    {},
    {"sources": ["web"]},
    {"sources": []},
    {"types": ["track", "page"]},
    {"events": ["Signed Up"]},
    {"events": []},
    {"exclude_events": ["Signed Up"]},
    {"types": ["track"], "events": ["Order Completed"], "exclude_events": ["x"]},
    {
        "actions": [
            {"name": "big", "subscribe": 'type = "track" and properties.total > 20'},
            {"name": "ids", "subscribe": 'type = "identify"'},
        ]
    },
    {"actions": [{"name": "none", "subscribe": 'event = "nothing"'}]},
]


def _destination(extra: dict[str, Any]) -> WebhookDestination:
    fields = {"name": "hook", "url": "http://127.0.0.1:1/hook", **extra}
    if "actions" in fields:
        fields["actions"] = [msgspec.convert(a, ActionConfig) for a in fields["actions"]]
    return WebhookDestination(**fields)


def _row(index: int, message: dict[str, Any], source: str) -> OutboxRow:
    payload = {"messageId": f"m{index}", **message}
    return OutboxRow(
        message_id=f"m{index}",
        source=source,
        type=message["type"],
        event=message.get("event"),
        user_id=message.get("userId"),
        anonymous_id=None,
        received_at="2030-01-01T00:00:00.000Z",
        payload=msgspec.json.encode(payload).decode(),
    )


def _sql_owed(rows: list[OutboxRow], where: tuple[str, list[Any]]) -> set[str]:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, message_id TEXT, source TEXT, type TEXT,"
        " event TEXT, user_id TEXT, anonymous_id TEXT, received_at TEXT, payload TEXT)"
    )
    conn.executemany(
        "INSERT INTO messages (message_id, source, type, event, user_id, anonymous_id,"
        " received_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [msgspec.structs.astuple(row) for row in rows],
    )
    condition, params = where
    found = conn.execute(f"SELECT message_id FROM messages WHERE {condition}", params)
    result = {row[0] for row in found}
    conn.close()
    return result


@pytest.mark.parametrize("extra", RULES, ids=lambda extra: ",".join(extra) or "defaults")
def test_the_predicate_agrees_with_the_sql(extra: dict[str, Any]) -> None:
    destination = _destination(extra)
    actions = registry.actions_of(destination)
    rule = routing_rule(destination, actions)
    rows = [
        _row(index, message, source)
        for index, (message, source) in enumerate(itertools.product(MESSAGES, ["web", "ios"]))
    ]
    router = Router(rule, actions)
    assert {row.message_id for row in rows if router.owed(row)} == _sql_owed(rows, rule.where())


def test_the_reason_names_the_filter() -> None:
    destination = _destination({"events": ["Signed Up"]})
    actions = registry.actions_of(destination)
    router = Router(routing_rule(destination, actions), actions)
    assert router.reason(_row(1, MESSAGES[1], "web")) == "filters"
    assert router.reason(_row(2, MESSAGES[7], "web")) == "integrations object"
    assert router.reason(_row(3, MESSAGES[0], "web")) is None


def test_a_replayed_or_imported_message_goes_where_its_headers_say() -> None:
    destination = _destination({"events": ["Signed Up"]})
    actions = registry.actions_of(destination)
    router = Router(routing_rule(destination, actions), actions)
    signed_up, order = _row(1, MESSAGES[0], "web"), _row(2, MESSAGES[1], "web")
    assert router.takes({}, signed_up)
    assert not router.takes({}, order)
    # Replayed for one destination: that one alone, whatever its rule.
    assert router.takes({"Cdpd-Destination": "hook"}, order)
    assert not router.takes({"Cdpd-Destination": "other"}, signed_up)
    # Imported from a SQLite outbox: the destinations still owed it there, by their rule.
    assert router.takes({"Cdpd-Owed-To": '["other","hook"]'}, signed_up)
    assert not router.takes({"Cdpd-Owed-To": '["hook"]'}, order)
    assert not router.takes({"Cdpd-Owed-To": '["other"]'}, signed_up)
    assert not router.takes({"Cdpd-Owed-To": "[]"}, signed_up)
    assert not router.takes({"Cdpd-Owed-To": "not a list"}, signed_up)
