"""The RabbitMQ destination against the local RabbitMQ: what a bound queue receives for each
Segment spec example (body, properties, routing key), mapped routing keys, an unroutable
message with `mandatory`, a passive exchange that is missing, wrong credentials, and a broker
that is down and then back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aio_pika.abc
import pytest

from tests import spec_examples
from tests.brokers import EXAMPLES, Deliver, attempts, down_then_back, settled, stored, unique
from tests.contracts import harness
from tests.helpers import FakeClock
from tests.integration.test_delivery import delivered, deliveries, recorded, send, track


def destination(url: str, exchange: str, extra: str = "") -> str:
    return harness.destination("rabbitmq", "rabbit", url=url, exchange=exchange) + extra


def url_of(address: tuple[str, int]) -> str:
    return f"amqp://guest@{address[0]}:{address[1]}/"


@pytest.fixture
def url(rabbitmq_server: tuple[str, int]) -> str:
    return url_of(rabbitmq_server)


@pytest.fixture
async def channel(
    rabbitmq_server: tuple[str, int],
) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(url_of(rabbitmq_server), password="guest")
    async with connection:
        yield await connection.channel()


async def bind_all(
    channel: aio_pika.abc.AbstractChannel, name: str, arguments: dict[str, int | str] | None = None
) -> tuple[aio_pika.abc.AbstractExchange, aio_pika.abc.AbstractQueue]:
    """Exchange `name`, as cdpd declares it, with a queue of the test's own bound for every
    key (declared with `arguments`)."""
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True, arguments=arguments)
    await queue.bind(exchange, "#")
    return exchange, queue


@pytest.fixture
async def bound(
    channel: aio_pika.abc.AbstractChannel,
) -> AsyncIterator[tuple[str, aio_pika.abc.AbstractQueue]]:
    """An exchange of the test's own with a queue bound for every key."""
    name = unique("cdpd-test-")
    exchange, queue = await bind_all(channel, name)
    yield name, queue
    await exchange.delete()


async def drain(queue: aio_pika.abc.AbstractQueue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    messages = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        messages.append(message)
    return messages


async def test_each_spec_example_reaches_the_bound_queue_as_a_persistent_json_message(
    deliver: Deliver,
    data_dir: Path,
    url: str,
    bound: tuple[str, aio_pika.abc.AbstractQueue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exchange, queue = bound
    monkeypatch.setenv("CDPD_TEST_RABBIT_PASSWORD", "guest")
    extra = 'routing_key = "{{type}}.{{event}}"\npassword_env = "CDPD_TEST_RABBIT_PASSWORD"\n'
    await deliver(destination(url, exchange, extra), EXAMPLES)
    payloads = stored(data_dir)
    received = {m.message_id: m for m in await drain(queue)}
    assert sorted(received) == sorted(e["messageId"] for e in spec_examples.ALL.values())
    for kind, example in spec_examples.ALL.items():
        message = received[example["messageId"]]
        event = "Order_Completed" if kind == "track" else "_"
        assert (message.exchange, message.routing_key) == (exchange, f"{kind}.{event}")
        assert message.body.decode() == payloads[example["messageId"]]
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert attempts(data_dir) == []  # delivered on the first attempt: nothing in the ledger


async def test_an_action_maps_the_payload_and_the_routing_key(
    deliver: Deliver, url: str, bound: tuple[str, aio_pika.abc.AbstractQueue]
) -> None:
    exchange, queue = bound
    action = """
[[destinations.actions]]
name = "orders"
subscribe = 'type = "track"'
[destinations.actions.mapping]
payload = { order = { "@path" = "$.properties.order_id" } }
routing_key = { "@template" = "orders.{{userId}}.{{properties.order_id}}" }
"""
    order = track(1, user="a.b#*", properties={"order_id": "o 1"})
    await deliver(destination(url, exchange, action), [order])
    (message,) = await drain(queue)
    assert message.routing_key == "orders.a_b__.o_1"
    assert message.body == b'{"order":"o 1"}'
    assert message.message_id == "m1"


async def test_an_unroutable_message_is_dead_with_the_reason(
    deliver: Deliver, data_dir: Path, url: str, channel: aio_pika.abc.AbstractChannel
) -> None:
    exchange = unique("cdpd-test-")  # cdpd declares it; nothing is bound to it
    entry = destination(url, exchange)
    await deliver(entry, [track(1)], wait=settled)
    assert deliveries(data_dir, "rabbit") == [("m1", "dead", 1, 400)]
    assert attempts(data_dir)[0][2] == (
        f"RabbitMQ: unroutable: exchange {exchange!r} has no queue bound for routing key"
        " 'track' (NO_ROUTE) (status 400 is not retried)"
    )
    await channel.exchange_delete(exchange)


async def test_a_nack_is_retried_until_the_queue_takes_it(
    deliver: Deliver, data_dir: Path, url: str, channel: aio_pika.abc.AbstractChannel
) -> None:
    name = unique("cdpd-test-")
    # A queue that holds one message and refuses (nacks) any more.
    full: dict[str, int | str] = {"x-max-length": 1, "x-overflow": "reject-publish"}
    exchange, queue = await bind_all(channel, name, full)
    clock = FakeClock()
    entry = destination(url, name, "concurrency = 1\n")
    async with deliver.posting(entry, [track(1)], clock) as (server, lane):
        await delivered(lane, 1)
        await send(deliver.http, server, [track(2)])
        await recorded(lane, 2)
        assert deliveries(data_dir, "rabbit")[1] == ("m2", "retrying", 1, 503)
        assert [m.message_id for m in await drain(queue)] == ["m1"]
        clock.advance(300)
        await delivered(lane, 2)
    assert attempts(data_dir)[0][2] == (
        f"RabbitMQ: the broker nacked the message (exchange {name!r}, routing key 'track'):"
        " a queue refused it or the broker failed to store it"
    )
    assert [m.message_id for m in await drain(queue)] == ["m2"]
    await exchange.delete()


async def test_a_passive_exchange_that_is_missing_is_retried_until_it_exists(
    deliver: Deliver, data_dir: Path, url: str, channel: aio_pika.abc.AbstractChannel
) -> None:
    name = unique("cdpd-test-")
    clock = FakeClock()
    entry = destination(url, name, 'exchange_declare = "passive"\n')
    async with deliver.posting(entry, [track(1)], clock) as (_, lane):
        await recorded(lane, 1)
        assert deliveries(data_dir, "rabbit") == [("m1", "retrying", 1, None)]
        exchange, queue = await bind_all(channel, name)
        clock.advance(300)
        await delivered(lane, 1)
    error = attempts(data_dir)[0][2]
    assert error.startswith("RabbitMQ at amqp://127.0.0.1:5672/: ChannelNotFoundEntity: ")
    assert f"no exchange '{name}'" in error
    assert [m.message_id for m in await drain(queue)] == ["m1"]
    await exchange.delete()


async def test_wrong_credentials_are_retried_and_never_shown(
    deliver: Deliver, data_dir: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDPD_TEST_RABBIT_PASSWORD", "not-the-password")
    extra = 'password_env = "CDPD_TEST_RABBIT_PASSWORD"\n'
    entry = destination(url, unique("cdpd-test-"), extra)
    async with deliver.posting(entry, [track(1)]) as (_, lane):
        await recorded(lane, 1)
        assert lane.stats.unhealthy  # and retried with backoff, not dead
    # The first attempt (another may follow before shutdown: the backoff has full jitter).
    (_, status, error, outcome) = attempts(data_dir)[0]
    assert (status, outcome) == (None, "retrying")
    assert error.startswith("credentials refused: ")
    assert "ACCESS_REFUSED" in error or "authentication" in error.lower()
    assert "not-the-password" not in error


async def test_a_broker_that_is_down_is_retried_then_delivered(
    deliver: Deliver,
    data_dir: Path,
    rabbitmq_server: tuple[str, int],
    bound: tuple[str, aio_pika.abc.AbstractQueue],
) -> None:
    exchange, queue = bound
    port = await down_then_back(
        deliver,
        rabbitmq_server,
        lambda port: destination(url_of(("127.0.0.1", port)), exchange),
    )
    assert attempts(data_dir)[0][2].startswith(f"RabbitMQ at amqp://127.0.0.1:{port}/: ")
    assert sorted(m.message_id for m in await drain(queue)) == ["m1", "m2"]


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ('routing_key = "a.#"\n', "routing_key 'a.#': has a wildcard (#)"),
        ('routing_key = "a..{{type}}"\n', "has an empty level"),
        ('url = "http://example.com"\n', "destinations[0].url"),
    ],
)
def test_check_config_reports_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, says: str
) -> None:
    entry = harness.destination("rabbitmq", "rabbit") + settings
    assert says in harness.check_config(tmp_path, capsys, entry)
