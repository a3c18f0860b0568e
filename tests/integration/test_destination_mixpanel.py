"""The Mixpanel destination against a local server that keeps Mixpanel's contract: Segment's
spec examples through a real cdpd, the exact requests its presets make, and Mixpanel's answers
(partial failures, bad credentials, 413, 429)."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import msgspec
import pytest

from cdpd.destinations.mixpanel import insert_id
from tests import spec_examples as spec
from tests.contracts.base import Scripted
from tests.contracts.harness import (
    catalog_entry,
    check_config,
    deliver,
    destination,
    posting,
    states,
)
from tests.contracts.mixpanel import MixpanelContract
from tests.helpers import FakeClock
from tests.integration.test_delivery import MakeConfig, recorded, track

TOKEN = "mp_token"
SECRET = "mp_secret"


def mixpanel(url: str, name: str = "mp", **options: Any) -> str:
    settings = {"project_token": TOKEN, "api_secret": SECRET, "api_url": url, **options}
    return destination("mixpanel", name, **settings)


def form_records(contract: MixpanelContract, path: str) -> list[Any]:
    records = []
    for request in contract.on(path):
        assert request.query == {"verbose": "1"}
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        data = msgspec.json.decode(parse_qs(request.body.decode())["data"][0])
        records += data
    return records


def imported(contract: MixpanelContract) -> dict[str, dict[str, Any]]:
    events = {}
    for request in contract.on("/import"):
        for event in msgspec.json.decode(request.body):
            events[event["properties"]["$insert_id"]] = event
    return events


COMMON = {
    "ip": "203.0.113.7",
    "$current_url": "https://shop.example.com/checkout",
    "$lib_version": "next-1.84.1",
    "$locale": "en-US",
    "$source": "cdpd",
    "mp_lib": "cdpd: analytics.js",
}
IDS = {
    "id": "97980cfea0067",
    "$anon_id": "507f191e810c19729de860ea",
    "distinct_id": "97980cfea0067",
    "$identified_id": "97980cfea0067",
    "$user_id": "97980cfea0067",
}


def _event(event: str, time_ms: int, message_id: str, **own: Any) -> dict[str, Any]:
    properties = {"time": time_ms, "ip": COMMON["ip"], **IDS}
    properties.update({k: v for k, v in COMMON.items() if k != "ip"})
    properties["$insert_id"] = message_id
    return {"event": event, "properties": _ordered(properties) | own}


_ORDER = [
    "time", "ip", "id", "$anon_id", "distinct_id", "$app_build_number", "$app_version_string",
    "$app_namespace", "$app_name", "$current_url", "$identified_id", "$insert_id",
    "$lib_version", "$locale", "$os", "$source", "$user_id", "mp_lib",
]  # fmt: skip


def _ordered(properties: dict[str, Any]) -> dict[str, Any]:
    return {key: properties[key] for key in _ORDER if key in properties}


async def test_spec_examples_make_segments_requests(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with MixpanelContract() as contract:
        entry = mixpanel(contract.url)
        await deliver(make_config, http, entry, list(spec.ALL.values()), settled=5)
    # Alias is no preset of Segment's Mixpanel (Actions): not routed at all.
    assert set(states(data_dir)) == {
        spec.IDENTIFY["messageId"],
        spec.ORDER_COMPLETED["messageId"],
        spec.PAGE["messageId"],
        spec.SCREEN["messageId"],
        spec.GROUP["messageId"],
    }
    assert {state for state, _, _ in states(data_dir).values()} == {"delivered"}

    for request in contract.on("/import"):
        assert request.query == {"strict": "1"}
        assert (
            request.headers["Authorization"]
            == "Basic " + base64.b64encode(f"{SECRET}:".encode()).decode()
        )
        assert request.headers["Content-Type"] == "application/json"
    events = imported(contract)
    order_id = spec.ORDER_COMPLETED["messageId"]
    order_ms, page_ms = 1424730550000, 1424730535111
    assert events[order_id] == _event(
        "Order Completed", order_ms, order_id, **spec.ORDER_COMPLETED["properties"]
    )
    # A product's event repeats the order's properties but for the order-level ones.
    order_level = {"affiliation", "subtotal", "total", "revenue", "shipping", "tax", "discount"}
    order_level |= {"coupon", "currency", "order_number", "products", "$insert_id"}
    shared = {k: v for k, v in events[order_id]["properties"].items() if k not in order_level}
    assert shared["checkout_id"] == "fksdjfsdjfisjf9sdfjsd9f"
    assert "total" not in shared
    first, second = spec.ORDER_COMPLETED["properties"]["products"]
    products = [e for e in events.values() if e["event"] == "Product Purchased"]
    assert products == [
        {
            "event": "Product Purchased",
            "properties": shared
            | {"$insert_id": products[0]["properties"]["$insert_id"], "time": order_ms - 1}
            | first,
        },
        {
            "event": "Product Purchased",
            "properties": shared
            | {"$insert_id": products[1]["properties"]["$insert_id"], "time": order_ms - 2}
            | second,
        },
    ]
    # Each product's insert id is derived from the order's, the same on every retry, and
    # within Mixpanel's 36 characters.
    product_ids = [p["properties"]["$insert_id"] for p in products]
    assert len(set(product_ids)) == 2
    assert all(len(i) == 36 for i in product_ids)
    assert order_id not in product_ids
    assert events[spec.PAGE["messageId"]] == _event(
        "Viewed Home", page_ms, spec.PAGE["messageId"], **spec.PAGE["properties"]
    )
    screen = events[spec.SCREEN["messageId"]]
    assert screen == {
        "event": "Viewed Home",
        "properties": {
            "time": page_ms,
            "id": "97980cfea0067",
            "distinct_id": "97980cfea0067",
            "$app_version_string": "545",
            "$app_name": "InitechGlobal",
            "$identified_id": "97980cfea0067",
            "$insert_id": spec.SCREEN["messageId"],
            "$os": "iOS",
            "$source": "cdpd",
            "$user_id": "97980cfea0067",
            "variation": "blue signup button",
        },
    }

    assert form_records(contract, "/track") == [
        {
            "event": "$identify",
            "properties": {
                "$identified_id": "97980cfea0067",
                "$anon_id": "507f191e810c19729de860ea",
                "token": TOKEN,
            },
        }
    ]
    assert form_records(contract, "/engage") == [
        {
            "$token": TOKEN,
            "$distinct_id": "97980cfea0067",
            "$ip": "203.0.113.7",
            "$set": {
                "plan": "premium",
                "logins": 5,
                "address": {"street": "6th St", "city": "San Francisco", "state": "CA"},
                "createdAt": "2015-02-01T00:00:00.000Z",
                "$email": "peter@example.com",
                "$name": "Peter Gibbons",
            },
        }
    ]
    assert form_records(contract, "/groups") == [
        {
            "$token": TOKEN,
            "$group_key": "$group_id",
            "$group_id": "0e8c78ea9d97a7b8185e8632",
            "$set": spec.GROUP["traits"],
        }
    ]


ALIAS_ACTION = """
[[destinations.actions]]
name = "aliases"
kind = "alias"
subscribe = 'type = "alias"'
"""


async def test_a_configured_alias_action_creates_the_alias(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with MixpanelContract() as contract:
        entries = mixpanel(contract.url) + ALIAS_ACTION
        await deliver(make_config, http, entries, [spec.ALIAS, spec.IDENTIFY], recorded=1)
    assert form_records(contract, "/track") == [
        {
            "event": "$create_alias",
            "properties": {
                "distinct_id": "507f191e810c19729de860ea",
                "alias": "97980cfea0067",
                "token": TOKEN,
            },
        }
    ]
    assert states(data_dir) == {spec.ALIAS["messageId"]: ("delivered", None, None)}


async def test_rejected_events_fail_alone_with_mixpanels_reason(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    messages = [track(1), track(2, user="null"), track(3), spec.ORDER_COMPLETED]
    async with MixpanelContract() as contract:
        entry = mixpanel(contract.url, concurrency=1)
        await deliver(make_config, http, entry, messages, settled=4)
    assert states(data_dir) == {
        "m1": ("delivered", None, None),
        "m2": (
            "dead",
            400,
            "HTTP 400: properties.distinct_id: 'properties.distinct_id' is invalid: 'null' "
            "(the destination cannot take it as it is)",
        ),
        "m3": ("delivered", None, None),
        spec.ORDER_COMPLETED["messageId"]: ("delivered", None, None),
    }
    assert set(imported(contract)) >= {"m1", "m3", spec.ORDER_COMPLETED["messageId"]}
    assert "m1" in contract.events
    assert "m2" not in contract.events


async def test_an_answer_that_arrives_in_pieces_is_read_to_its_end(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    messages = [track(1), track(2, user="null"), track(3)]
    async with MixpanelContract() as contract:
        contract.answer_piece_bytes = 64
        entry = mixpanel(contract.url, concurrency=1)
        await deliver(make_config, http, entry, messages, settled=3)
    found = states(data_dir)
    assert (found["m1"], found["m3"]) == (("delivered", None, None), ("delivered", None, None))
    assert found["m2"][:2] == ("dead", 400)
    assert "'properties.distinct_id' is invalid: 'null'" in found["m2"][2]


async def test_no_part_of_the_token_shows_where_a_verbose_error_is_cut(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    # Mixpanel's verbose error quotes the token across the point where the error is cut.
    said = "x" * 295 + f" {TOKEN} " + "y" * 300
    async with MixpanelContract() as contract:
        contract.script.append(Scripted(200, '{"status":0,"error":"' + said + '"}'))
        entry = mixpanel(contract.url)
        await deliver(make_config, http, entry, [spec.IDENTIFY], settled=1)
    ((state, _, error),) = states(data_dir).values()
    assert state == "dead"
    assert f" {TOKEN[:3]}" not in error


@pytest.mark.parametrize("status", [401, 403])
async def test_bad_credentials_are_dead_and_mark_the_destination_unhealthy(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path, status: int
) -> None:
    async with MixpanelContract() as contract:
        if status == 403:
            contract.script.append(
                Scripted(403, '{"code":403,"error":"Forbidden","status":"Forbidden"}')
            )
            entry = mixpanel(contract.url)
        else:
            entry = mixpanel(contract.url, api_secret="wrong")
        async with posting(make_config, http, entry, [track(1)]) as lane:
            await recorded(lane, 1)
            assert lane.stats.unhealthy
    ((state, last_status, error),) = states(data_dir).values()
    assert (state, last_status) == ("dead", status)
    assert error.startswith(f"HTTP {status}: ")
    assert "wrong" not in error
    assert SECRET not in error


async def test_a_refused_project_token_marks_the_destination_unhealthy(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    """Mixpanel's form endpoints answer a wrong token with 200 and `status: 0`: dead, and
    unhealthy."""
    async with MixpanelContract() as contract:
        entry = mixpanel(contract.url, project_token="not-the-token")
        async with posting(make_config, http, entry, [spec.IDENTIFY]) as lane:
            await recorded(lane, 1)
            assert lane.stats.unhealthy
    ((state, _, error),) = states(data_dir).values()
    assert state == "dead"
    assert error.startswith("credentials refused: Mixpanel /")
    assert "token, missing or empty" in error
    assert "not-the-token" not in error


async def test_429_waits_for_retry_after_then_delivers(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    async with MixpanelContract() as contract:
        contract.script.append(
            Scripted(
                429,
                '{"code":429,"error":"Project exceeded rate limits.","status":"Too Many"}',
                {"Retry-After": "120"},
            )
        )
        async with posting(make_config, http, mixpanel(contract.url), [track(1)], clock) as lane:
            await recorded(lane, 1)
            assert states(data_dir)["m1"][:2] == ("retrying", 429)
            clock.advance(121)
            await recorded(lane, 2)
    assert states(data_dir)["m1"] == ("delivered", 200, None)  # its ledger row, after a retry
    assert [r.status for r in contract.on("/import")] == [429, 200]


async def test_413_splits_the_batch_and_only_an_event_too_large_alone_fails(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    messages = [track(n, properties={"note": "x" * 900}) for n in range(1, 6)]
    messages.append(track(6, properties={"note": "x" * 5000}))
    async with MixpanelContract(max_import_bytes=4000) as contract:
        entry = mixpanel(contract.url, concurrency=1)
        await deliver(make_config, http, entry, messages, settled=6)
    found = states(data_dir)
    assert {m: found[m][0] for m in found} == {f"m{n}": "delivered" for n in range(1, 6)} | {
        "m6": "dead"
    }
    assert found["m6"][1] == 413
    assert all(len(r.body) <= 4000 for r in contract.on("/import") if r.status == 200)
    assert set(contract.events) == {f"m{n}" for n in range(1, 6)}


async def test_413_splits_profile_updates_and_only_one_too_large_alone_fails(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    def identify(n: int, note_bytes: int) -> dict[str, Any]:
        traits = {"note": "x" * note_bytes}
        return {"type": "identify", "userId": f"u{n}", "traits": traits, "messageId": f"i{n}"}

    messages = [identify(n, 900) for n in range(1, 6)] + [identify(6, 5000)]
    async with MixpanelContract(max_form_bytes=4000) as contract:
        entry = mixpanel(contract.url, concurrency=1)
        await deliver(make_config, http, entry, messages, settled=6)
    found = states(data_dir)
    assert {m: found[m][:2] for m in found} == {
        f"i{n}": ("delivered", None) for n in range(1, 6)
    } | {"i6": ("dead", 413)}
    assert sorted(u["$distinct_id"] for u in contract.profile_updates) == [
        f"u{n}" for n in range(1, 6)
    ]


async def test_service_account_authenticates_import_with_its_project(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    account = ("svc.user", "svc-secret", "12345")
    async with MixpanelContract(service_account=account) as contract:
        options = {
            "service_account_username": "svc.user",
            "service_account_secret": "svc-secret",
            "project_id": "12345",
            "strict": False,
        }
        await deliver(make_config, http, mixpanel(contract.url, **options), [track(1)], recorded=1)
    (request,) = contract.on("/import")
    assert request.query == {"strict": "0", "project_id": "12345"}
    assert (
        request.headers["Authorization"]
        == "Basic " + base64.b64encode(b"svc.user:svc-secret").decode()
    )
    assert states(data_dir)["m1"] == ("delivered", None, None)


async def test_an_insert_id_mixpanel_cannot_take_is_replaced_by_a_stable_uuid(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    long_id = "ajs-next-1733430000000-2f1e2d3c4b5a69788a9b0c1d2e3f4a5b"
    message = copy.deepcopy(track(1))
    message["messageId"] = long_id
    async with MixpanelContract() as contract:
        await deliver(make_config, http, mixpanel(contract.url), [message], recorded=1)
    assert list(contract.events) == [insert_id(long_id)]
    assert insert_id(long_id) == insert_id(long_id) != long_id


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        (
            'api_url = "http://127.0.0.1:9"\n',
            "destination 'mp': needs project_token, or project_token_env",
        ),
        (
            'project_token = "t"\nservice_account_username = "u"\n',
            "a service account needs service_account_secret",
        ),
        ('project_token = "t"\nbatch_size = 5000\n', "batch_size"),
    ],
)
def test_check_config_reports_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, says: str
) -> None:
    assert says in check_config(tmp_path, capsys, destination("mixpanel", "mp") + settings)


def test_the_catalog_lists_mixpanel_with_segments_presets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = catalog_entry(capsys, "mixpanel")
    assert entry["catalog_name"] == "Mixpanel"
    assert {a["name"] for a in entry["actions"]} == {
        "track",
        "purchase",
        "identify",
        "group",
        "alias",
    }
    presets = {p["name"]: p for p in entry["presets"]}
    assert presets["Page Calls"]["mapping"] == {"event": {"@template": "Viewed {{name}}"}}
    assert presets["Order Completed Calls"]["kind"] == "purchase"
    assert {s["name"]: s["default"] for s in entry["settings"]}["api_url"] == (
        "https://api.mixpanel.com"
    )
