"""The Customer.io destination against a local Track API that keeps Customer.io's contract:
the Segment spec examples become the exact requests Segment's Customer.io (Actions) presets
make, alias is not routed unless an action takes it, and Customer.io's refusals land in the
outbox with its own words."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import spec_examples as spec
from tests.contracts.base import Scripted
from tests.contracts.customerio import API_KEY, SITE_ID, CustomerIoTrack
from tests.contracts.harness import (
    attempts,
    check_config,
    deliver,
    deliver_on_retry,
    destination,
    posting,
)
from tests.helpers import query
from tests.integration.test_delivery import MakeConfig, deliveries, recorded

USER = "97980cfea0067"
ANONYMOUS = "507f191e810c19729de860ea"


def customerio(url: str, extra: str = "", *, api_key: str = API_KEY) -> str:
    entry = destination("customerio", "cio", api_url=url, site_id=SITE_ID, api_key=api_key)
    return entry + extra


def unix_s(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def ulid(message_id: str, iso: str) -> str:
    """The event id cdpd makes from a messageId that is not a ULID: the event's time in
    milliseconds, then the first 80 bits of the messageId's SHA-256, in Crockford's base 32."""
    millis = round(datetime.fromisoformat(iso).timestamp() * 1000)
    number = (millis << 80) | int.from_bytes(hashlib.sha256(message_id.encode()).digest()[:10])
    return "".join(
        "0123456789ABCDEFGHJKMNPQRSTVWXYZ"[(number >> 5 * i) & 31] for i in range(25, -1, -1)
    )


def requests_made(server: CustomerIoTrack) -> list[tuple[str, str, Any]]:
    return sorted(
        ((c.method, c.path, c.json) for c in server.accepted),
        key=lambda call: (call[1], str(call[2])),
    )


async def test_spec_examples_become_track_api_requests(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with CustomerIoTrack() as api:
        entry = customerio(api.url)
        await deliver(make_config, http, entry, list(spec.ALL.values()), delivered=5)
    order = spec.ORDER_COMPLETED
    assert requests_made(api) == [
        (
            "PUT",
            f"/api/v1/customers/{USER}",
            {
                "name": "Peter Gibbons",
                "email": "peter@example.com",
                "plan": "premium",
                "logins": 5,
                "address": {"street": "6th St", "city": "San Francisco", "state": "CA"},
                "created_at": 1422748800,
                "anonymous_id": ANONYMOUS,
            },
        ),
        (
            "POST",
            f"/api/v1/customers/{USER}/events",
            {
                "name": "Home",
                "type": "screen",
                "data": {"variation": "blue signup button"},
                "timestamp": unix_s(spec.SCREEN["timestamp"]),
                "id": ulid(spec.SCREEN["messageId"], spec.SCREEN["timestamp"]),
            },
        ),
        (
            "POST",
            f"/api/v1/customers/{USER}/events",
            {
                "name": "Order Completed",
                "data": order["properties"],
                "timestamp": unix_s(order["timestamp"]),
                "id": ulid(order["messageId"], order["timestamp"]),
            },
        ),
        (
            "POST",
            f"/api/v1/customers/{USER}/events",
            {
                "name": "https://www.example.com/home",
                "type": "page",
                "data": spec.PAGE["properties"],
                "timestamp": unix_s(spec.PAGE["timestamp"]),
                "id": ulid(spec.PAGE["messageId"], spec.PAGE["timestamp"]),
            },
        ),
        (
            "POST",
            "/api/v2/entity",
            {
                "type": "object",
                "action": "identify",
                "identifiers": {"object_type_id": "1", "object_id": "0e8c78ea9d97a7b8185e8632"},
                "attributes": spec.GROUP["traits"],
                "cio_relationships": [{"identifiers": {"id": USER}}],
            },
        ),
    ]
    basic = "Basic " + base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
    assert {call.headers["Authorization"] for call in api.calls} == {basic}
    # Segment's presets give alias no action: it is not routed at all.
    routed = {message_id for message_id, *_ in deliveries(data_dir, "cio")}
    assert spec.ALIAS["messageId"] not in routed
    assert len(routed) == 5


async def test_anonymous_events_and_merging_on_alias(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    merge = """
[[destinations.actions]]
name = "events"
kind = "track_event"
subscribe = 'type = "track"'
[[destinations.actions]]
name = "merge"
kind = "merge_people"
subscribe = 'type = "alias"'
"""
    # A messageId that is a ULID already is Customer.io's event id as it is.
    anonymous = {**spec.ORDER_COMPLETED, "messageId": "01JEB3ZK8Q4V6W1N2P3R5T7X9Y"}
    del anonymous["userId"]
    async with CustomerIoTrack() as api:
        entries = customerio(api.url, merge)
        await deliver(make_config, http, entries, [anonymous, spec.ALIAS], delivered=2)
    assert requests_made(api) == [
        (
            "POST",
            "/api/v1/events",
            {
                "name": "Order Completed",
                "data": anonymous["properties"],
                "timestamp": unix_s(anonymous["timestamp"]),
                "id": "01JEB3ZK8Q4V6W1N2P3R5T7X9Y",
                "anonymous_id": ANONYMOUS,
            },
        ),
        (
            "POST",
            "/api/v1/merge_customers",
            {"primary": {"id": USER}, "secondary": {"id": ANONYMOUS}},
        ),
    ]


async def test_bad_credentials_are_dead_at_once_and_mark_the_destination(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with CustomerIoTrack() as api:
        entry = customerio(api.url, api_key="wrong-key")
        async with posting(make_config, http, entry, [spec.IDENTIFY]) as lane:
            await recorded(lane, 1)
            assert lane.stats.unhealthy
    assert deliveries(data_dir, "cio") == [(spec.IDENTIFY["messageId"], "dead", 1, 401)]
    ((error,),) = query(data_dir, "SELECT last_error FROM deliveries")
    assert error == "HTTP 401: Unauthorized request (status 401 is not retried)"
    assert "wrong-key" not in error


async def test_a_refused_event_is_dead_with_customerios_reason(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    long_name = {**spec.ORDER_COMPLETED, "event": "x" * 101}
    async with CustomerIoTrack() as api:
        entry = customerio(api.url)
        await deliver(make_config, http, entry, [long_name, spec.IDENTIFY], recorded=2)
    assert sorted(deliveries(data_dir, "cio")) == sorted(
        [
            (spec.ORDER_COMPLETED["messageId"], "dead", 1, 400),
            (spec.IDENTIFY["messageId"], "delivered", 1, None),
        ]
    )
    errors = query(data_dir, "SELECT last_error FROM deliveries WHERE state = 'dead'")
    assert errors == [
        ("HTTP 400: event name cannot be longer than 100 bytes (status 400 is not retried)",)
    ]


async def test_no_part_of_the_api_key_shows_where_customerios_reason_is_cut(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    # Customer.io's reason quotes the key across the point where the error text is cut.
    reason = "x" * 474 + f"key {API_KEY} " + "y" * 100
    async with CustomerIoTrack() as api:
        api.script.append(Scripted(400, '{"meta":{"error":"' + reason + '"}}'))
        await deliver(make_config, http, customerio(api.url), [spec.IDENTIFY], settled=1)
    ((error,),) = query(data_dir, "SELECT last_error FROM deliveries")
    assert error.startswith("HTTP 400: xxx")
    assert API_KEY[:6] not in error


@pytest.mark.parametrize(
    ("first", "error"),
    [
        (
            Scripted(429, '{"meta":{"error":"rate limited"}}', {"Retry-After": "20"}),
            "HTTP 429: rate limited",
        ),
        (
            Scripted(503, "upstream unavailable", content_type="text/plain"),
            "HTTP 503: upstream unavailable",
        ),
    ],
)
async def test_throttling_and_outages_are_retried(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    first: Scripted,
    error: str,
) -> None:
    async with CustomerIoTrack() as api:
        api.script.append(first)
        entry = customerio(api.url)
        await deliver_on_retry(make_config, http, entry, [spec.ORDER_COMPLETED], 301)
    assert attempts(data_dir) == [(first.status, error, "retrying"), (200, None, "delivered")]
    assert len(api.accepted) == 1
    # The retry carries the same event id, so Customer.io can drop a second copy.
    assert len(api.calls) == 2
    assert len({call.json["id"] for call in api.calls}) == 1


def test_check_config_wants_both_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = check_config(tmp_path, capsys, destination("customerio", "cio", site_id="s"))
    assert "needs site_id (or site_id_env) and api_key (or api_key_env)" in err


async def test_a_message_without_a_person_is_dead_and_never_sent(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    nobody = {**spec.IDENTIFY, "messageId": "nobody", "traits": {"plan": "free"}}
    del nobody["userId"]
    async with CustomerIoTrack() as api:
        await deliver(make_config, http, customerio(api.url), [nobody], recorded=1)
    assert api.calls == []
    assert query(data_dir, "SELECT state, last_error FROM deliveries") == [
        (
            "dead",
            "Create or Update Person: no value for required field id"
            " (the destination cannot take it as it is)",
        )
    ]


async def test_dot_segment_ids_stay_in_their_own_path(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    messages = [
        {"type": "identify", "userId": "..", "messageId": "i1", "traits": {"plan": "pro"}},
        {"type": "track", "userId": ".", "event": "Signed Up", "messageId": "t1"},
        {"type": "track", "userId": "..", "event": "Signed Up", "messageId": "t2"},
    ]
    async with CustomerIoTrack() as api:
        await deliver(make_config, http, customerio(api.url), messages, settled=3)
    # An HTTP client resolves `.` and `..` segments (`/customers/../events` is `/events`):
    # the ids arrive as themselves, escaped, at the person's own path.
    assert sorted((c.method, c.path, c.status) for c in api.calls) == [
        ("POST", "/api/v1/customers/../events", 200),
        ("POST", "/api/v1/customers/./events", 200),
        ("PUT", "/api/v1/customers/..", 200),
    ]
