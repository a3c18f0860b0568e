"""The GA4 destination against a local Measurement Protocol that keeps GA4's contract (and,
as GA4 does, answers 2xx to what it drops, which it keeps aside here): the Segment spec
examples become the exact requests Segment's GA4 actions make, events that break GA4's rules
are mended or dead with the reason, requests hold one client and at most 25 events, and the
validation server's verdicts split a batch."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdpd.app import running
from cdpd.model.timestamps import format_ms, now_ms
from tests import spec_examples as spec
from tests.contracts.base import Scripted
from tests.contracts.ga4 import API_SECRET, MEASUREMENT_ID, Ga4Collect
from tests.contracts.harness import attempts, check_config, deliver, deliver_on_retry, destination
from tests.helpers import query
from tests.integration.test_delivery import MakeConfig, delivered, deliveries, send

USER = "97980cfea0067"
ANONYMOUS = "507f191e810c19729de860ea"


def ga4(url: str, extra: str = "") -> str:
    entry = destination(
        "ga4",
        "ga4",
        api_url=f"{url}/mp/collect",
        measurement_id=MEASUREMENT_ID,
        api_secret=API_SECRET,
    )
    return entry + extra


def micros(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1000) * 1000


def track(message_id: str, event: str, user: str = USER, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": message_id,
        "userId": user,
        "anonymousId": f"anon-{user}",
        "event": event,
        "timestamp": "2026-12-01T10:00:00.000Z",
        "properties": properties,
    }


async def test_spec_examples_become_measurement_protocol_requests(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Ga4Collect() as api, running(make_config(ga4(api.url))) as server:
        lane = server.delivery.lanes["ga4"]
        await send(http, server, [spec.IDENTIFY, spec.ORDER_COMPLETED, spec.SCREEN])
        await delivered(lane, 1)
        await send(http, server, [spec.PAGE, spec.GROUP, spec.ALIAS])
        await delivered(lane, 2)
    order = spec.ORDER_COMPLETED
    # The examples' times (2015) are older than GA4's 72 hours: sent without them.
    assert api.collected == [
        {
            "client_id": ANONYMOUS,
            "user_id": USER,
            "events": [
                {
                    "name": "purchase",
                    "params": {
                        "engagement_time_msec": 1,
                        "currency": "USD",
                        "transaction_id": "50314b8e9bcf000000000000",
                        "value": 27.5,
                        "affiliation": "Google Store",
                        "coupon": "hasbros",
                        "shipping": 3,
                        "tax": 2,
                        "items": [
                            {
                                "item_id": "507f1f77bcf86cd799439011",
                                "item_name": "Monopoly: 3rd Edition",
                                "item_category": "Games",
                                "price": 19,
                                "quantity": 1,
                            },
                            {
                                "item_id": "505bd76785ebb509fc183733",
                                "item_name": "Uno Card Game",
                                "item_category": "Games",
                                "price": 3,
                                "quantity": 2,
                            },
                        ],
                    },
                }
            ],
        },
        {
            "client_id": ANONYMOUS,
            "user_id": USER,
            "events": [
                {
                    "name": "page_view",
                    "params": {
                        "engagement_time_msec": 1,
                        "page_location": "https://shop.example.com/checkout",
                        "page_title": "Checkout",
                    },
                }
            ],
        },
    ]
    call = api.accepted[0]
    assert call.query == {"measurement_id": MEASUREMENT_ID, "api_secret": API_SECRET}
    assert call.headers["Content-Type"] == "application/json"
    assert api.dropped == []
    # GA4's presets take track and page: identify, screen, group and alias are not routed.
    assert deliveries(data_dir, "ga4") == [
        (order["messageId"], "delivered", 1, None),
        (spec.PAGE["messageId"], "delivered", 1, None),
    ]


async def test_custom_events_are_snake_cased_and_their_parameters_mended(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    reviewed = track(
        "m-review",
        "Product Reviewed (v2)",
        product_id="p-1",
        rating=5,
        **{"review body": "x" * 150, "verified": True, "nothing": None},
        address={"city": "SF", "zip": "94107"},
    )
    actions = """
[[destinations.actions]]
name = "custom"
kind = "custom_event"
subscribe = 'type = "track"'
[destinations.actions.mapping.user_properties]
plan = "premium"
"""
    async with Ga4Collect() as api:
        await deliver(make_config, http, ga4(api.url, actions), [reviewed], delivered=1)
    assert api.collected == [
        {
            "client_id": f"anon-{USER}",
            "user_id": USER,
            "user_properties": {"plan": {"value": "premium"}},
            "events": [
                {
                    "name": "product_reviewed_v2",
                    "params": {
                        "engagement_time_msec": 1,
                        "product_id": "p-1",
                        "rating": 5,
                        "review_body": "x" * 100,
                        "verified": "true",
                        "address_city": "SF",
                        "address_zip": "94107",
                    },
                }
            ],
        }
    ]
    assert api.dropped == []


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (track("m1", "2 Fast"), "the event name '2_fast' does not start with a letter"),
        (
            track("m1", "ga_internal"),
            "the event name 'ga_internal' starts with a reserved prefix (ga_, google_, firebase_)",
        ),
        (track("m1", "Session Start"), "the event name 'session_start' is reserved by GA4"),
        (
            track("m1", "A" * 41),
            f"the event name '{'a' * 41}' is longer than 40 characters",
        ),
        (
            track("m1", "Filtered", tags=["a", "b"]),
            "the parameter 'tags' is a list (GA4 takes a list only as items)",
        ),
        (
            track("m1", "Wide", **{f"p{n}": n for n in range(25)}),
            "the event has 26 parameters (GA4 keeps at most 25)",
        ),
        (
            track("m1", "Order Completed", order_id="o-1", currency="dollars", products=[]),
            "the currency 'dollars' is not a 3-letter ISO 4217 code",
        ),
    ],
)
async def test_events_that_cannot_be_mended_are_dead_with_the_reason(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    message: dict[str, Any],
    reason: str,
) -> None:
    messages = [message, track("m2", "Fine Event")]
    async with Ga4Collect() as api:
        await deliver(make_config, http, ga4(api.url), messages, recorded=1, delivered=1)
    rows = dict(query(data_dir, "SELECT message_id, last_error FROM deliveries"))
    assert rows["m1"].endswith(f": {reason} (the destination cannot take it as it is)")
    assert "m2" not in rows  # delivered on its first attempt: no ledger row
    assert [event["name"] for body in api.collected for event in body["events"]] == ["fine_event"]
    assert api.dropped == []


async def test_events_older_than_72_hours_go_without_their_time(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    """GA4 drops an event backdated more than 72 hours (with a 2xx): cdpd sends it without
    `timestamp_micros`, so GA4 records it when it arrives; a recent one keeps its time."""
    recent = format_ms(now_ms() - 3600_000)
    old = format_ms(now_ms() - 73 * 3600_000)
    messages = [
        {**track("m1", "Recent Event"), "timestamp": recent},
        {**track("m2", "Old Event"), "timestamp": old},
    ]
    async with Ga4Collect() as api:
        await deliver(make_config, http, ga4(api.url), messages, delivered=2)
    events = {e["name"]: e for body in api.collected for e in body["events"]}
    assert events["recent_event"]["timestamp_micros"] == micros(recent)
    assert "timestamp_micros" not in events["old_event"]
    assert api.dropped == []


async def test_requests_hold_one_client_and_at_most_25_events(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    messages = [track(f"a{n}", "Clicked", user="alice", n=n) for n in range(30)]
    messages += [track(f"b{n}", "Clicked", user="bob", n=n) for n in range(3)]
    async with Ga4Collect() as api:
        entry = ga4(api.url, "batch_size = 40\nconcurrency = 1\n")
        await deliver(make_config, http, entry, messages, delivered=33, timeout_s=20)
    bodies = api.collected
    assert all(1 <= len(body["events"]) <= 25 for body in bodies)
    by_client: dict[str, list[int]] = {}
    for body in bodies:
        by_client.setdefault(body["client_id"], []).extend(
            event["params"]["n"] for event in body["events"]
        )
    assert {client: sorted(ns) for client, ns in by_client.items()} == {
        "anon-alice": list(range(30)),
        "anon-bob": list(range(3)),
    }
    assert len(bodies) >= 3  # alice's 30 events need two requests, bob's a third
    assert api.dropped == []
    assert {state for _, state, _, _ in deliveries(data_dir, "ga4")} == {"delivered"}


async def test_validation_server_verdicts_split_a_batch(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    good = {**spec.ORDER_COMPLETED, "messageId": "good"}
    odd = {**spec.ORDER_COMPLETED, "messageId": "odd"}
    odd["properties"] = {**spec.ORDER_COMPLETED["properties"], "currency": "XYZ"}
    config = "validate = true\nbatch_size = 10\nconcurrency = 1\n"
    async with Ga4Collect() as api:
        entry = ga4(api.url, config)
        await deliver(make_config, http, entry, [good, odd], recorded=1, delivered=1)
    rows = dict(
        query(
            data_dir, "SELECT message_id, state || ': ' || coalesce(last_error, '') FROM deliveries"
        )
    )
    assert rows == {  # good was delivered on its first attempt: no ledger row
        "odd": "dead: GA4 validation: VALUE_INVALID: Unknown currency [XYZ]. "
        "(the destination cannot take it as it is)",
    }
    assert [call.path for call in api.calls][-1] == "/mp/collect"
    collected = [e["params"]["transaction_id"] for b in api.collected for e in b["events"]]
    assert collected == ["50314b8e9bcf000000000000"]
    assert sum(len(b["events"]) for b in api.collected) == 1
    assert api.dropped == []


async def test_the_api_secret_never_shows_in_errors(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Ga4Collect() as api:
        api.script.append(
            Scripted(503, f"backend down for api_secret={API_SECRET}", content_type="text/plain")
        )
        await deliver_on_retry(make_config, http, ga4(api.url), [spec.ORDER_COMPLETED], 301)
    assert attempts(data_dir) == [
        (503, "HTTP 503: backend down for api_secret=***", "retrying"),
        (204, None, "delivered"),
    ]


async def test_no_part_of_the_api_secret_shows_where_an_error_is_cut(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    # The secret straddles the point where the error text is cut: its start must not show.
    answer = "x" * 477 + f"api_secret={API_SECRET} " + "y" * 100
    async with Ga4Collect() as api:
        api.script.append(Scripted(400, answer, content_type="text/plain"))
        await deliver(make_config, http, ga4(api.url), [spec.ORDER_COMPLETED], settled=1)
    ((status, error, outcome),) = attempts(data_dir)
    assert (status, outcome) == (400, "dead")
    assert f"api_secret={API_SECRET[:2]}" not in error


def test_check_config_wants_an_api_secret_and_a_debug_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = destination("ga4", "ga4", measurement_id="G-1")
    assert "needs api_secret, or api_secret_env naming the environment variable" in check_config(
        tmp_path, capsys, entry
    )
    entry += 'api_secret = "s"\nvalidate = true\napi_url = "https://proxy.example.com/ga"\n'
    err = check_config(tmp_path, capsys, entry)
    assert "validate needs an api_url ending in /mp/collect" in err
