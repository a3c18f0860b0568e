"""Actions on a destination: FQL subscriptions route, mappings shape what is sent, and a bad
subscription or mapping is a config error that points at it."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd.app import running
from tests.helpers import config_text, query
from tests.integration.test_delivery import (
    MakeConfig,
    delivered,
    deliveries,
    hook,
    recorded,
    send,
    track,
)
from tests.sink import Sink

ORDERS_ACTIONS = """
[[destinations.actions]]
name = "orders"
subscribe = 'type = "track" and event = "Order Completed" and properties.total > 100'
[destinations.actions.mapping]
data = { order = { "@path" = "$.properties.order_id" }, who = { "@template" = "user {{userId}}" } }

[[destinations.actions]]
name = "pages"
subscribe = 'type = "page"'
[destinations.actions.mapping]
data = { page = { "@case" = { operator = "upper", value = { "@path" = "$.name" } } } }
"""


async def test_subscriptions_route_and_mappings_shape(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink() as sink:
        config = make_config(hook("hook", sink.url) + ORDERS_ACTIONS)
        async with running(config) as server:
            await send(
                http,
                server,
                [
                    track(1, properties={"order_id": "o-1", "total": 150}),
                    track(2, properties={"order_id": "o-2", "total": 50}),  # too small
                    track(3, event="Cart Viewed", properties={"total": 500}),
                    {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "m4"},
                    {"type": "identify", "userId": "u1", "messageId": "m5"},
                ],
            )
            await delivered(server.delivery.lanes["hook"], 2)
    bodies = sorted((msgspec.json.decode(r.body) for r in sink.received), key=str)
    assert bodies == [{"order": "o-1", "who": "user u1"}, {"page": "HOME"}]
    # Only the messages some action subscribes to were routed at all.
    assert [status[:2] for status in deliveries(data_dir, "hook")] == [
        ("m1", "delivered"),
        ("m4", "delivered"),
    ]


async def test_a_message_two_actions_take_is_sent_by_both(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    both = """
[[destinations.actions]]
name = "everything"
subscribe = 'type = "track"'
[[destinations.actions]]
name = "just-ids"
subscribe = 'type = "track"'
[destinations.actions.mapping]
data = { id = { "@path" = "$.messageId" } }
"""
    async with Sink() as sink, running(make_config(hook("hook", sink.url) + both)) as server:
        await send(http, server, [track(1)])
        await delivered(server.delivery.lanes["hook"], 1)
    bodies = [msgspec.json.decode(r.body) for r in sink.received]
    assert {"id": "m1"} in bodies
    assert any(b.get("event") == "Order Completed" for b in bodies)


async def test_a_required_field_without_a_value_is_dead_not_retried(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    needs = """
[[destinations.actions]]
name = "by-coupon"
subscribe = 'type = "track"'
[destinations.actions.mapping]
data = { "@path" = "$.properties.coupon" }
"""
    async with Sink() as sink, running(make_config(hook("hook", sink.url) + needs)) as server:
        await send(http, server, [track(1)])
        await recorded(server.delivery.lanes["hook"], 1)
    assert query(data_dir, "SELECT state, last_error FROM deliveries") == [
        (
            "dead",
            "by-coupon: no value for required field data (the destination cannot take it as it is)",
        )
    ]
    assert sink.received == []


@pytest.mark.parametrize(
    ("actions", "says"),
    [
        (
            '[[destinations.actions]]\nname = "a"\nsubscribe = \'type = "track" and\'\n',
            "destination 'hook', actions[0] (a).subscribe: expected a field",
        ),
        (
            '[[destinations.actions]]\nname = "a"\nsubscribe = \'type = "track"\'\n'
            "[destinations.actions.mapping]\nbody = 1\n",
            "actions[0] (a).mapping.body: send has no field body (fields: data)",
        ),
        (
            '[[destinations.actions]]\nname = "a"\nsubscribe = \'type = "track"\'\n'
            '[destinations.actions.mapping]\ndata = { "@pth" = "$.x" }\n',
            "actions[0] (a).mapping.data: unknown directive @pth",
        ),
        (
            '[[destinations.actions]]\nname = "a"\nkind = "post"\nsubscribe = \'type = "track"\'\n',
            "actions[0] (a).kind: expected one of send, got 'post'",
        ),
    ],
)
def test_check_config_points_at_the_bad_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], actions: str, says: str
) -> None:
    path = tmp_path / "cdpd.toml"
    path.write_text(config_text(tmp_path / "var", hook("hook", "http://127.0.0.1:9/x") + actions))
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert says in capsys.readouterr().err


def test_destinations_command_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["destinations", "--json"]) == 0
    catalog = {entry["type"]: entry for entry in msgspec.json.decode(capsys.readouterr().out)}
    webhook = catalog["webhook"]
    assert webhook["catalog_name"] == "Webhooks"
    assert {s["name"] for s in webhook["settings"]} >= {"url", "headers", "secret"}
    assert webhook["actions"][0]["fields"]["data"]["default"] == {"@path": "$."}
    assert webhook["presets"][0]["kind"] == "send"
