"""The MQTT destination against the local Mosquitto: what a subscribed client receives for each
Segment spec example (topic, payload, QoS, retain), mapped topics made safe, and a broker that
is down and then back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from tests import spec_examples
from tests.brokers import EXAMPLES, Deliver, attempts, down_then_back, stored, unique
from tests.contracts import harness
from tests.integration.test_delivery import track


def destination(port: int, topic: str, extra: str = "") -> str:
    # A client id of its own: a broker drops a connection when another takes its id, and other
    # test runs may publish to the same Mosquitto meanwhile.
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "topic": topic,
        "client_id": unique("cdpd-test-"),
    }
    return harness.destination("mqtt", "mqtt", **settings) + extra


@pytest.fixture
def port(mqtt_server: tuple[str, int]) -> int:
    return mqtt_server[1]


@pytest.fixture
async def subscriber(
    mqtt_server: tuple[str, int],
) -> AsyncIterator[tuple[str, aiomqtt.Client]]:
    """A client subscribed at QoS 1 to every topic under a prefix of the test's own."""
    prefix = unique("cdpd-test-")
    async with aiomqtt.Client(*mqtt_server, identifier=unique("cdpd-test-sub-")) as client:
        await client.subscribe(f"{prefix}/#", qos=1)
        yield prefix, client


async def receive(client: aiomqtt.Client, count: int) -> list[aiomqtt.Message]:
    received: list[aiomqtt.Message] = []
    async with asyncio.timeout(30):
        async for message in client.messages:
            received.append(message)
            if len(received) == count:
                return received
    return received


async def test_each_spec_example_reaches_a_subscriber_at_qos_1(
    deliver: Deliver, data_dir: Path, port: int, subscriber: tuple[str, aiomqtt.Client]
) -> None:
    prefix, client = subscriber
    await deliver(destination(port, prefix + "/{{type}}/{{event}}"), EXAMPLES)
    payloads = stored(data_dir)
    by_topic = {m.topic.value: m for m in await receive(client, 6)}
    for kind, example in spec_examples.ALL.items():
        event = "Order_Completed" if kind == "track" else "_"
        message = by_topic.pop(f"{prefix}/{kind}/{event}")
        assert message.payload == payloads[example["messageId"]].encode()
        assert (message.qos, message.retain) == (1, False)
    assert by_topic == {}
    assert attempts(data_dir) == []  # delivered on the first attempt: nothing in the ledger


async def test_an_action_maps_the_payload_and_the_topic(
    deliver: Deliver, port: int, subscriber: tuple[str, aiomqtt.Client]
) -> None:
    prefix, client = subscriber
    action = f"""
[[destinations.actions]]
name = "orders"
subscribe = 'type = "track"'
[destinations.actions.mapping]
payload = {{ order = {{ "@path" = "$.properties.order_id" }} }}
topic = {{ "@template" = "{prefix}/users/{{{{userId}}}}" }}
"""
    order = track(1, user="a/+/#", properties={"order_id": "o-1"})
    await deliver(destination(port, "unused", action), [order])
    (message,) = await receive(client, 1)
    assert message.topic.value == f"{prefix}/users/a____"
    assert message.payload == b'{"order":"o-1"}'


async def test_a_broker_that_is_down_is_retried_then_delivered(
    deliver: Deliver,
    data_dir: Path,
    mqtt_server: tuple[str, int],
    subscriber: tuple[str, aiomqtt.Client],
) -> None:
    prefix, client = subscriber
    port = await down_then_back(
        deliver,
        mqtt_server,
        lambda port: destination(port, prefix + "/{{type}}", "timeout_s = 5\n"),
    )
    assert attempts(data_dir)[0][2].startswith(f"MQTT at 127.0.0.1:{port}: ")
    assert [m.payload for m in await receive(client, 2)] == [
        payload.encode() for _, payload in sorted(stored(data_dir).items())
    ]


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ('topic = "cdpd/+/x"\n', "topic 'cdpd/+/x': has a wildcard (+)"),
        ('topic = "cdpd/#"\n', "has a wildcard (#)"),
        ('topic = "cdpd//{{type}}"\n', "has an empty level"),
        ('topic = "$SYS/cdpd"\n', "starts with $"),
        ("qos = 0\n", "destinations[0].qos"),
    ],
)
def test_check_config_reports_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, says: str
) -> None:
    entry = harness.destination("mqtt", "mqtt") + settings
    assert says in harness.check_config(tmp_path, capsys, entry)
