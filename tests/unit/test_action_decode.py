"""A stored message that cannot be decoded fails only its own delivery: `prepare` makes it that
item's problem (dead, with the reason), and the other messages of the batch are prepared."""

from __future__ import annotations

from cdpd.destinations import actions, brokers, mixpanel, rabbitmq
from cdpd.destinations.actions import Prepared
from cdpd.destinations.base import Result
from cdpd.destinations.settings import MixpanelDestination, RabbitMQDestination
from cdpd.model.rows import MessageView

GOOD = '{"type":"track","event":"E","userId":"u1","messageId":"%s","properties":{"n":1}}'
# What an older cdpd accepted: numbers that no decoder reads back.
OUT_OF_RANGE = (
    '{"type":"track","event":"E","userId":"u1","messageId":"big","properties":{"n":1e400}}'
)
TOO_LONG = '{"type":"track","event":"E","userId":"u1","messageId":"long","properties":{"n":%s}}' % (
    "7" * 5000
)


def claimed(n: int, payload: str) -> MessageView:
    return MessageView(seq=n, message_id=f"m{n}", payload=payload)


def test_an_undecodable_message_is_dead_and_the_rest_of_the_batch_goes_on() -> None:
    config = MixpanelDestination(name="mp", project_token="t")
    built = actions.build(config, mixpanel.KINDS, mixpanel.PRESETS)
    batch = [
        claimed(1, GOOD % "a"),
        claimed(2, OUT_OF_RANGE),
        claimed(3, TOO_LONG),
        claimed(4, GOOD % "b"),
    ]
    prepared = actions.prepare(built, batch)
    problems = {p.delivery.id: p.problem for p in prepared}
    assert problems[1] is None
    assert problems[4] is None
    assert (
        problems[2]
        == "the stored message cannot be decoded: Number out of range - at `$[...][...]`"
    )
    assert problems[3] is not None
    assert problems[3].startswith("the stored message cannot be decoded: ")
    # What the lane does with them: the problems are never sent, the others are.
    results = [
        Result(None, p.problem, invalid=True) if p.problem else Result(200) for p in prepared
    ]
    combined = actions.combine(batch, prepared, results)
    assert [(r.status, r.invalid) for r in combined] == [
        (200, False),
        (None, True),
        (None, True),
        (200, False),
    ]


def test_a_broker_names_an_undecodable_message_without_its_values() -> None:
    config = RabbitMQDestination(name="r", routing_key="cdpd.{{type}}")
    built = actions.build(config, rabbitmq.KINDS, rabbitmq.PRESETS)
    (item,) = actions.prepare(built, [claimed(1, OUT_OF_RANGE)])  # sent whole: not decoded
    assert isinstance(item, Prepared)
    assert item.problem is None
    names = brokers.Names("r", "routing_key", "cdpd.{{type}}", built, rabbitmq.check_routing_key)
    assert names.render(item, brokers.message_of(item)) == ("cdpd._", None)
