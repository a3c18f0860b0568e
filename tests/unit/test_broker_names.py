"""Broker names from templates: slot values become one safe token, and each broker's checks
refuse wildcards, spaces and empty levels."""

from __future__ import annotations

import msgspec
import pytest

from cdpd import cli
from cdpd.destinations import actions as actions_module
from cdpd.destinations import brokers, mqtt, nats_jetstream, rabbitmq, redis_streams
from cdpd.destinations.actions import Prepared
from cdpd.destinations.settings import RabbitMQDestination
from cdpd.mapping import kit
from cdpd.model.rows import MessageView

CLAIMED = MessageView(seq=1, message_id="m1", payload="{}")


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Order Completed", "Order_Completed"),
        ("a.b*c>d#e+f/g:h", "a_b_c_d_e_f_g_h"),
        ("", "_"),
        (None, "_"),
        (kit.ABSENT, "_"),
        (True, "true"),
        (42, "42"),
        ("ünïcode", "_n_code"),
        ("x" * 500, "x" * brokers.MAX_SLOT_CHARS),
        ({"a": 1}, "__a__1_"),
    ],
)
def test_a_slot_value_becomes_one_safe_token(value: object, token: str) -> None:
    assert brokers.safe_token(value) == token


def test_render_fills_each_slot_with_its_token() -> None:
    message = {"type": "track", "event": "a.b > c", "properties": {"n": 1}}
    assert brokers.render("cdpd.{{type}}.{{ event }}.{{properties.n}}.{{nope}}", message) == (
        "cdpd.track.a_b___c.1._"
    )


@pytest.mark.parametrize(
    ("check", "name", "problem"),
    [
        (nats_jetstream.check_subject, "cdpd.track", None),
        (nats_jetstream.check_subject, "cdpd.*", "has a wildcard (*)"),
        (nats_jetstream.check_subject, "cdpd.>", "has a wildcard (>)"),
        (
            nats_jetstream.check_subject,
            ".cdpd",
            "has an empty level (a leading, trailing or doubled '.')",
        ),
        (nats_jetstream.check_subject, "cdpd track", "has a space or a control character"),
        (nats_jetstream.check_subject, "", "is empty"),
        (rabbitmq.check_routing_key, "", None),  # the default exchange, fanout: no key needed
        (rabbitmq.check_routing_key, "a.#", "has a wildcard (#)"),
        (rabbitmq.check_routing_key, "a" * 256, "is longer than 255 bytes"),
        (mqtt.check_topic, "cdpd/track", None),
        (mqtt.check_topic, "cdpd/+", "has a wildcard (+)"),
        (mqtt.check_topic, "cdpd//x", "has an empty level (a leading, trailing or doubled '/')"),
        (mqtt.check_topic, "$SYS/x", "starts with $ (topics reserved for the broker)"),
        (redis_streams.check_key, "cdpd:track", None),
        (redis_streams.check_key, "cdpd:[a]", "has a wildcard ([ ])"),
        (redis_streams.check_key, "cdpd\x00", "has a space or a control character"),
    ],
)
def test_each_broker_checks_its_names(check: object, name: str, problem: str | None) -> None:
    assert callable(check)
    assert check(name) == problem


def test_the_catalog_lists_the_brokers(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["destinations", "--json"]) == 0
    catalog = {entry["type"]: entry for entry in msgspec.json.decode(capsys.readouterr().out)}
    names = {"redis": "stream", "nats": "subject", "rabbitmq": "routing_key", "mqtt": "topic"}
    for kind, field in names.items():
        entry = catalog[kind]
        publish = entry["actions"][0]
        assert publish["name"] == "publish"
        assert publish["fields"]["payload"]["default"] == {"@path": "$."}
        assert field in publish["fields"]
        assert field in {s["name"] for s in entry["settings"]}
        assert entry["presets"][0]["name"] == "Publish every message"
    assert [catalog[k]["catalog_name"] for k in names] == ["Redis", "NATS", "RabbitMQ", "MQTT"]


def test_a_rendered_name_too_long_for_the_broker_is_refused() -> None:
    actions = actions_module.build(
        RabbitMQDestination(name="r", routing_key="{{a}}.{{b}}"),
        rabbitmq.KINDS,
        rabbitmq.PRESETS,
    )
    names = brokers.Names("r", "routing_key", "{{a}}.{{b}}", actions, rabbitmq.check_routing_key)
    item = Prepared(CLAIMED, actions[0].name, "publish", {}, None)
    assert names.render(item, {"a": "x", "b": "y z"}) == ("x.y_z", None)
    assert names.render(item, {"a": "x" * 200, "b": "y" * 200}) == (
        None,
        "Publish every message: routing_key: is longer than 255 bytes",
    )
