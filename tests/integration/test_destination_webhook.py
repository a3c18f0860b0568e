"""The webhook destination's contract on Segment's spec examples: each message is POSTed exactly as
stored in the outbox, with its id, signature and content headers; a batch carries them all under
one idempotency key; a mapping reshapes the body; and a receiver that is gone makes them dead."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from cdpd import __version__
from cdpd.app import running
from cdpd.destinations import actions, webhook
from cdpd.destinations.base import Result
from cdpd.destinations.settings import WebhookDestination
from cdpd.destinations.webhook import sign
from cdpd.model.rows import MessageView
from tests.helpers import query, stored_payloads
from tests.integration.test_delivery import MakeConfig, delivered, deliveries, hook, recorded, send
from tests.sink import Sink, status
from tests.spec_examples import ALL, ORDER_COMPLETED

SECRET = "whsec-test-secret"


def by_id(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["messageId"]: m for m in messages}


async def test_each_spec_example_is_posted_exactly_as_stored_and_signed(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink() as sink:
        config = make_config(hook("hook", sink.url, secret=SECRET))
        async with running(config) as server:
            await send(http, server, list(ALL.values()))
            await delivered(server.delivery.lanes["hook"], len(ALL))
    stored = by_id(stored_payloads(data_dir))
    assert len(sink.received) == len(ALL)
    for request in sink.received:
        body = msgspec.json.decode(request.body)
        message_id = body["messageId"]
        assert body == stored[message_id]  # the normalised message, as the outbox holds it
        headers = request.headers
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"] == f"cdpd/{__version__}"
        assert headers["Idempotency-Key"] == headers["X-Cdpd-Message-Id"] == message_id
        expected = sign(SECRET.encode(), headers["X-Cdpd-Timestamp"], request.body)
        assert headers["X-Cdpd-Signature"] == f"v1={expected}"
    assert {m["type"] for m in sink.messages} == set(ALL)
    order = next(m for m in sink.messages if m["type"] == "track")
    assert order["properties"]["products"] == ORDER_COMPLETED["properties"]["products"]


async def test_a_batch_carries_every_example_under_one_key(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink() as sink:
        config = make_config(hook("hook", sink.url, batch_size=10, concurrency=1))
        async with running(config) as server:
            await send(http, server, list(ALL.values()))
            await delivered(server.delivery.lanes["hook"], len(ALL))
    stored = by_id(stored_payloads(data_dir))
    sent = [m for request in sink.received for m in msgspec.json.decode(request.body)["batch"]]
    assert sorted(sent, key=lambda m: m["messageId"]) == sorted(
        stored.values(), key=lambda m: m["messageId"]
    )
    for request in sink.received:
        ids = [m["messageId"] for m in msgspec.json.decode(request.body)["batch"]]
        key = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        assert request.headers["Idempotency-Key"] == key


ORDER_SUMMARY = """
[[destinations.actions]]
name = "orders"
subscribe = 'type = "track" and event = "Order Completed"'
[destinations.actions.mapping.data]
order = { "@path" = "$.properties.order_id" }
total = { "@path" = "$.properties.total" }
who = { "@template" = "{{userId}} paid in {{properties.currency}}" }
skus = { "@arrayPath" = ["$.properties.products", { sku = { "@path" = "$.sku" } }] }
"""


async def test_a_mapping_reshapes_the_order_and_skips_the_rest(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink() as sink:
        config = make_config(hook("hook", sink.url) + ORDER_SUMMARY)
        async with running(config) as server:
            await send(http, server, list(ALL.values()))
            await delivered(server.delivery.lanes["hook"], 1)
    [request] = sink.received
    products = ORDER_COMPLETED["properties"]["products"]
    assert msgspec.json.decode(request.body) == {
        "order": ORDER_COMPLETED["properties"]["order_id"],
        "total": ORDER_COMPLETED["properties"]["total"],
        "who": f"{ORDER_COMPLETED['userId']} paid in {ORDER_COMPLETED['properties']['currency']}",
        "skus": [{"sku": p["sku"]} for p in products if "sku" in p],
    }
    # Only the order was owed to the destination at all.
    assert [row[0] for row in deliveries(data_dir)] == [ORDER_COMPLETED["messageId"]]


async def test_a_receiver_that_is_gone_makes_them_dead_with_its_answer(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink(status(410, body="hook deleted")) as sink:
        config = make_config(hook("hook", sink.url))
        async with running(config) as server:
            await send(http, server, list(ALL.values()))
            await recorded(server.delivery.lanes["hook"], len(ALL))
    assert {row[1:] for row in deliveries(data_dir)} == {("dead", 1, 410)}
    errors = {row[0] for row in query(data_dir, "SELECT error FROM attempts")}
    assert errors == {"HTTP 410: hook deleted (status 410 is not retried)"}


async def test_a_stored_message_id_with_a_control_character_is_dead_at_once() -> None:
    """Ingest refuses such ids now (`invalid_message_id`); one an older cdpd stored cannot go in
    the Idempotency-Key header, so it is invalid at once rather than retried for hours."""
    config = WebhookDestination(name="hook", url="http://127.0.0.1:1/unused")
    built = actions.build(config, webhook.KINDS, webhook.PRESETS)
    payload = '{"type":"track","userId":"u1","event":"E","messageId":"%s"}'
    batch = [
        MessageView(seq=1, message_id="m\r\n1", payload=payload % "m\\r\\n1"),
        MessageView(seq=2, message_id="m2", payload=payload % "m2"),
    ]  # fmt: skip
    async with Sink() as sink, aiohttp.ClientSession() as session:
        destination = webhook.Webhook(msgspec.structs.replace(config, url=sink.url), built)
        results = await destination.send(session, actions.prepare(built, batch))
    assert results == [
        Result(None, "messageId holds the control character U+000D", invalid=True),
        Result(200),
    ]
    assert [m["messageId"] for m in sink.messages] == ["m2"]
