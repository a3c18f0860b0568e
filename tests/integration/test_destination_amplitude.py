"""The Amplitude destination against a local server that keeps Amplitude's contract: Segment's
spec examples through a real cdpd, the exact requests its presets make, and Amplitude's answers
(a 400 naming bad events, which drops the whole request; 413; 429; a bad API key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import msgspec
import pytest

from cdpd.app import running
from cdpd.model.timestamps import format_ms, parse_ms
from tests import spec_examples as spec
from tests.contracts.amplitude import AmplitudeContract
from tests.contracts.harness import (
    catalog_entry,
    check_config,
    deliver,
    destination,
    posting,
    settled,
    states,
)
from tests.contracts.mixpanel import MixpanelContract
from tests.helpers import FakeClock, query
from tests.integration.test_delivery import MakeConfig, recorded, send, track
from tests.integration.test_destination_mixpanel import mixpanel

KEY = "amp_key"


def amplitude(url: str, name: str = "amp", **options: Any) -> str:
    settings = {
        "api_key": KEY,
        "api_url": f"{url}/2/httpapi",
        "identify_url": f"{url}/identify",
        **options,
    }
    return destination("amplitude", name, **settings)


def uploads(contract: AmplitudeContract) -> list[tuple[int, dict[str, Any]]]:
    return [(r.status, msgspec.json.decode(r.body)) for r in contract.on("/2/httpapi")]


def sent_events(contract: AmplitudeContract) -> list[dict[str, Any]]:
    return [
        event for status, body in uploads(contract) if status == 200 for event in body["events"]
    ]


WEB = {"platform": "Web", "language": "en-US", "ip": "203.0.113.7", "library": "analytics.js"}
USER = {"user_id": "97980cfea0067", "device_id": "507f191e810c19729de860ea"}


async def test_spec_examples_make_segments_requests(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with AmplitudeContract() as contract:
        entry = amplitude(contract.url)
        await deliver(make_config, http, entry, list(spec.ALL.values()), settled=4)
    # Segment's Amplitude (Actions) has no group or alias preset: those are not routed.
    assert states(data_dir) == {
        spec.IDENTIFY["messageId"]: ("delivered", None, None),
        spec.ORDER_COMPLETED["messageId"]: ("delivered", None, None),
        spec.PAGE["messageId"]: ("delivered", None, None),
        spec.SCREEN["messageId"]: ("delivered", None, None),
    }
    for status, body in uploads(contract):
        assert status == 200
        assert set(body) == {"api_key", "events"}
        assert body["api_key"] == KEY
    order_id = spec.ORDER_COMPLETED["messageId"]
    order = {
        **USER,
        "event_type": "Order Completed",
        "time": parse_ms("2015-02-23T22:29:10.000Z"),
        "event_properties": spec.ORDER_COMPLETED["properties"],
        **WEB,
        "insert_id": order_id,
    }
    page_ms = parse_ms("2015-02-23T22:28:55.111Z")
    first, second = spec.ORDER_COMPLETED["properties"]["products"]
    expected = [
        order | {"revenue": 25.0, "revenueType": "Purchase"},
        order
        | {
            "event_type": "Product Purchased",
            "event_properties": {"price": first["price"], "quantity": first["quantity"]},
            "insert_id": f"{order_id}-2",
        },
        order
        | {
            "event_type": "Product Purchased",
            "event_properties": {"price": second["price"], "quantity": second["quantity"]},
            "insert_id": f"{order_id}-3",
        },
        {
            **USER,
            "event_type": "Viewed Home",
            "time": page_ms,
            "event_properties": spec.PAGE["properties"],
            **WEB,
            "insert_id": spec.PAGE["messageId"],
        },
        {
            "user_id": "97980cfea0067",
            "event_type": "Viewed Home",
            "time": page_ms,
            "event_properties": {"variation": "blue signup button"},
            "app_version": "545",
            "os_name": "iOS",
            "insert_id": spec.SCREEN["messageId"],
        },
    ]
    assert sorted(sent_events(contract), key=str) == sorted(expected, key=str)

    (identify,) = contract.on("/identify")
    form = parse_qs(identify.body.decode())
    assert identify.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form["api_key"] == [KEY]
    assert msgspec.json.decode(form["identification"][0]) == [
        {**USER, "user_properties": spec.IDENTIFY["traits"], "language": "en-US"}
    ]


async def test_a_400_kills_only_the_events_it_names_and_the_rest_are_sent_again(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    messages = [track(1, user="user-12345"), track(2, user="u2"), track(3, user="user-67890")]
    async with AmplitudeContract() as contract:
        entry = amplitude(contract.url, concurrency=1)
        await deliver(make_config, http, entry, messages, settled=3)
    assert states(data_dir) == {
        "m1": ("delivered", None, None),
        "m2": (
            "dead",
            400,
            "HTTP 400: Invalid id length for user_id or device_id: too short: user_id "
            "(the destination cannot take it as it is)",
        ),
        "m3": ("delivered", None, None),
    }
    assert set(contract.events) == {"m1", "m3"}
    # Amplitude kept nothing of a request it answered 400: its other events went again at once.
    answered = uploads(contract)
    for position, (status, body) in enumerate(answered):
        if status == 400:
            others = {e["insert_id"] for e in body["events"]} - {"m2"}
            resent = {
                e["insert_id"] for _, later in answered[position + 1 :] for e in later["events"]
            }
            assert others <= resent
    assert any(status == 400 and len(body["events"]) > 1 for status, body in answered)


async def test_min_id_length_is_sent_as_amplitudes_option(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with AmplitudeContract() as contract:
        entry = amplitude(contract.url, min_id_length=2)
        await deliver(make_config, http, entry, [track(1, user="u2")], settled=1)
    ((status, body),) = uploads(contract)
    assert (status, body["options"]) == (200, {"min_id_length": 2})
    assert states(data_dir) == {"m1": ("delivered", None, None)}


async def test_a_silenced_device_is_dead_with_its_reason(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    silenced = {"type": "track", "event": "Signed Up", "anonymousId": "device-silenced"}
    messages = [track(1, user="user-12345"), silenced | {"messageId": "m2"}]
    async with AmplitudeContract() as contract:
        contract.silenced_devices.add("device-silenced")
        entry = amplitude(contract.url, concurrency=1)
        await deliver(make_config, http, entry, messages, settled=2)
    found = states(data_dir)
    assert found["m1"] == ("delivered", None, None)
    assert found["m2"][:2] == ("dead", 400)
    assert "silenced" in found["m2"][2]


async def test_a_bad_api_key_is_dead_and_never_shown(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    messages = [track(1, user="user-12345"), spec.IDENTIFY]
    async with AmplitudeContract() as contract:
        entry = amplitude(contract.url, api_key="wrong-key-123")
        async with posting(make_config, http, entry, messages) as lane:
            await settled(lane, 2)
            assert lane.stats.unhealthy  # Amplitude's 400 "Invalid API key" is its 401
    found = states(data_dir)
    assert found["m1"][:2] == ("dead", 400)
    assert found["m1"][2].startswith(
        'credentials refused: HTTP 400: {"code":400,"error":"Invalid API key: ***"}'
    )
    assert found[spec.IDENTIFY["messageId"]][:2] == ("dead", 400)
    assert all("wrong-key-123" not in error for _, _, error in found.values())


async def test_throttled_users_are_retried_after_amplitudes_window(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    async with AmplitudeContract() as contract:
        contract.throttled_users.add("97980cfea0067")
        entry = amplitude(contract.url)
        async with posting(make_config, http, entry, [spec.ORDER_COMPLETED], clock) as lane:
            await recorded(lane, 1)
            ((state, last, upcoming),) = query(
                data_dir, "SELECT state, last_attempt_at, next_attempt_at FROM deliveries"
            )
            assert state == "retrying"
            assert parse_ms(upcoming) - parse_ms(last) >= 30_000
            contract.throttled_users.clear()
            clock.advance(31)
            await settled(lane, 1)
    assert [status for status, _ in uploads(contract)] == [429, 200]
    assert len(contract.events) == 3  # the order and its two products


async def test_a_user_over_the_daily_quota_is_parked_until_it_resets(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    """Amplitude's 429 naming a user over the daily quota: that user's event waits until
    midnight UTC (not retried every 30 s, not dead after the retry window); another user's
    event in the same request is retried as after any 429."""
    clock = FakeClock()
    busy, calm = track(1, user="busy-user-1"), track(2, user="calm-user-2")
    async with AmplitudeContract() as contract:
        contract.over_quota_users.add("busy-user-1")
        entry = amplitude(contract.url)
        async with posting(make_config, http, entry, [busy, calm], clock) as lane:
            await recorded(lane, 1)
            rows = dict(
                (m, (s, n))
                for m, s, n in query(
                    data_dir, "SELECT message_id, state, next_attempt_at FROM deliveries"
                )
            )
            midnight = (clock.now_ms() // 86_400_000 + 1) * 86_400_000
            assert rows["m1"] == ("retrying", format_ms(midnight))
            assert rows["m2"][0] == "retrying"
            assert parse_ms(rows["m2"][1]) < midnight  # 30 s, not the quota's wait
            clock.advance(31)  # the calm user's retry: the busy one stays parked
            await settled(lane, 1)
            assert lane.stats.dead == 0
            contract.over_quota_users.clear()  # a new day
            clock.advance((midnight - clock.now_ms()) / 1000 + 1)
            await settled(lane, 2)
    assert {e["user_id"] for e in contract.events.values()} == {"busy-user-1", "calm-user-2"}


async def test_413_splits_the_batch_and_only_an_event_too_large_alone_fails(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    messages = [track(n, user=f"user-{n:05}", properties={"note": "x" * 900}) for n in range(1, 6)]
    messages.append(track(6, user="user-00006", properties={"note": "x" * 5000}))
    async with AmplitudeContract(max_bytes=4000) as contract:
        entry = amplitude(contract.url, concurrency=1)
        await deliver(make_config, http, entry, messages, settled=6)
    found = states(data_dir)
    assert {m: found[m][:2] for m in found} == {
        f"m{n}": ("delivered", None) for n in range(1, 6)
    } | {"m6": ("dead", 413)}
    assert set(contract.events) == {f"m{n}" for n in range(1, 6)}


async def test_413_splits_identifications_and_only_one_too_large_alone_fails(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    def identify(n: int, note_bytes: int) -> dict[str, Any]:
        traits = {"note": "x" * note_bytes}
        return {
            "type": "identify",
            "userId": f"user-{n:05}",
            "traits": traits,
            "messageId": f"i{n}",
        }

    messages = [identify(n, 900) for n in range(1, 6)] + [identify(6, 5000)]
    async with AmplitudeContract(max_identify_bytes=4000) as contract:
        entry = amplitude(contract.url, concurrency=1)
        await deliver(make_config, http, entry, messages, settled=6)
    found = states(data_dir)
    assert {m: found[m][:2] for m in found} == {
        f"i{n}": ("delivered", None) for n in range(1, 6)
    } | {"i6": ("dead", 413)}
    assert sorted(i["user_id"] for i in contract.identifications) == [
        f"user-{n:05}" for n in range(1, 6)
    ]


NO_IDS = """
[[destinations.actions]]
name = "events"
kind = "event"
subscribe = 'type = "track"'
[destinations.actions.mapping]
user_id = { "@path" = "$.context.nothing" }
device_id = { "@path" = "$.context.nothing" }
"""


async def test_an_event_without_ids_is_dead_without_being_sent(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with AmplitudeContract() as contract:
        entries = amplitude(contract.url) + NO_IDS
        await deliver(make_config, http, entries, [track(1, user="user-12345")], settled=1)
    assert states(data_dir) == {
        "m1": (
            "dead",
            None,
            "events: Amplitude needs a user_id or a device_id "
            "(the destination cannot take it as it is)",
        )
    }
    assert contract.calls == []


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ("", "destination 'amp': needs api_key, or api_key_env"),
        ('api_key_env = "CDPD_TEST_UNSET_AMPLITUDE_KEY"\n', "CDPD_TEST_UNSET_AMPLITUDE_KEY"),
        ('api_key = "k"\nmin_id_length = 0\n', "min_id_length"),
    ],
)
def test_check_config_reports_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, says: str
) -> None:
    assert says in check_config(tmp_path, capsys, destination("amplitude", "amp") + settings)


def test_the_catalog_lists_amplitude_with_segments_presets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = catalog_entry(capsys, "amplitude")
    assert entry["catalog_name"] == "Amplitude"
    assert [a["name"] for a in entry["actions"]] == ["event", "purchase", "identify"]
    presets = {p["name"]: p for p in entry["presets"]}
    assert presets["Screen Calls"]["mapping"] == {"event_type": {"@template": "Viewed {{name}}"}}
    assert set(presets) == {
        "Track Calls",
        "Order Completed Calls",
        "Page Calls",
        "Screen Calls",
        "Identify Calls",
    }


async def test_the_integrations_object_names_them_by_catalog_name(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with AmplitudeContract() as amp, MixpanelContract() as mp:
        config = make_config(amplitude(amp.url) + mixpanel(mp.url))
        async with running(config) as server:
            await send(
                http,
                server,
                [
                    track(1, user="user-00001", integrations={"Mixpanel": False}),
                    track(2, user="user-00002", integrations={"All": False, "Mixpanel": True}),
                    track(3, user="user-00003", integrations={"Amplitude": {"session_id": 1}}),
                ],
            )
            await settled(server.delivery.lanes["amp"], 2)
            await settled(server.delivery.lanes["mp"], 2)
    assert set(amp.events) == {"m1", "m3"}
    assert set(mp.events) == {"m2", "m3"}
