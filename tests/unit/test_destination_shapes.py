"""The pure parts of the Mixpanel and Amplitude destinations: how records are shaped and how
batches are cut to an API's limits."""

from __future__ import annotations

import pytest

from cdpd.destinations import actions, amplitude, http, mixpanel
from cdpd.destinations.base import Result


def test_chunks_respect_count_and_bytes() -> None:
    encoded = [(n, b"x" * 10) for n in range(7)]
    # [a,b] of 10-byte records: 2 + 10 + 1 + 10 = 23 bytes.
    runs = list(http.chunks(encoded, max_count=3, max_bytes=23, overhead_bytes=0))
    assert [[n for n, _ in run] for run in runs] == [[0, 1], [2, 3], [4, 5], [6]]
    runs = list(http.chunks(encoded, max_count=3, max_bytes=10_000, overhead_bytes=0))
    assert [len(run) for run in runs] == [3, 3, 1]


def test_a_record_larger_than_the_limit_goes_alone() -> None:
    encoded = [(0, b"x"), (1, b"y" * 100), (2, b"z")]
    runs = list(http.chunks(encoded, max_count=10, max_bytes=20, overhead_bytes=0))
    assert [[n for n, _ in run] for run in runs] == [[0], [1], [2]]


def test_worst_prefers_retryable_then_permanent_then_success() -> None:
    ok, dead, retry = Result(200), Result(400, "bad", invalid=True), Result(503, "down")
    assert actions.worst([ok, dead, retry]) is retry
    assert actions.worst([ok, dead]) is dead
    assert actions.worst([ok, ok]) is ok
    assert actions.worst([]).skipped


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("022bb90c-bbac-11e4-8dfc-aa07a5b093db", True),
        ("m1", True),
        ("ajs-next-1733430000000-2f1e2d3c4b5a69788a9b0c1d2e3f4a5b", False),
        ("has_underscore", False),
        ("", False),
    ],
)
def test_insert_ids_mixpanel_cannot_take_become_stable_uuids(value: str, kept: bool) -> None:
    made = mixpanel.insert_id(value)
    assert (made == value) is kept
    assert made == mixpanel.insert_id(value)
    assert len(made) <= 36


@pytest.mark.parametrize(
    ("agent", "browser", "version"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36",
            "Chrome",
            "120.0.0.0",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
            "Microsoft Edge",
            "120.0.2210.91",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            "Mobile Safari",
            "17.1",
        ),
        ("curl/8.4.0", None, None),
    ],
)
def test_browser_from_the_user_agent(agent: str, browser: str | None, version: str | None) -> None:
    assert mixpanel.browser_of(agent) == browser
    assert (mixpanel.browser_version(agent, browser) if browser else None) == version


def test_an_events_own_properties_never_overwrite_mixpanels_reserved_ones() -> None:
    fields = {
        "event": "Signed Up",
        "distinct_id": "u1",
        "insert_id": "m1",
        "time": "2015-02-23T22:28:55.111Z",
        "event_properties": {"distinct_id": "spoofed", "time": 0, "plan": "pro"},
    }
    properties = mixpanel.event_properties(fields)
    assert properties["distinct_id"] == "u1"
    assert properties["time"] == 1424730535111
    assert properties["plan"] == "pro"


def test_a_time_that_is_no_date_cannot_be_sent() -> None:
    with pytest.raises(ValueError, match="is not a date"):
        mixpanel.event_properties({"event": "x", "time": "yesterday"})


def test_profile_traits_rename_mixpanels_reserved_ones() -> None:
    traits = {"email": "a@example.com", "firstName": "Ann", "plan": "pro", "phone": None}
    assert mixpanel.profile_traits(traits) == {
        "plan": "pro",
        "$email": "a@example.com",
        "$first_name": "Ann",
    }


def test_amplitude_revenue_is_price_times_quantity_when_both_are_known() -> None:
    assert amplitude.revenue_of({"price": 3, "quantity": 2, "revenue": 100}) == {
        "revenue": 6,
        "revenueType": "Purchase",
        "quantity": 2,
        "price": 3,
    }
    assert amplitude.revenue_of({"revenue": 25}) == {"revenue": 25, "revenueType": "Purchase"}
    assert amplitude.revenue_of({"price": 3}) == {}


def test_amplitude_revenue_per_product_moves_revenue_off_the_order() -> None:
    fields = {
        "user_id": "user-1",
        "event_type": "Order Completed",
        "insert_id": "m1",
        "revenue": 25,
        "revenue_per_product": True,
        "products": [{"price": 19, "quantity": 1}, {"price": 3, "quantity": 2}],
    }
    order, first, second = amplitude.purchase_events(fields)
    assert "revenue" not in order
    assert (first["revenue"], second["revenue"]) == (19, 6)
    assert (first["insert_id"], second["insert_id"]) == ("m1-2", "m1-3")


def test_amplitude_user_property_operations() -> None:
    event = amplitude.event_of(
        {
            "user_id": "user-1",
            "event_type": "Signed Up",
            "user_properties": {"plan": "pro"},
            "set_once": {"initial_referrer": "https://a.example"},
            "set_always": {"referrer": None},
            "add": {"logins": 1},
            "platform": "ios",
        }
    )
    assert event["user_properties"] == {
        "plan": "pro",
        "$setOnce": {"initial_referrer": "https://a.example"},
        "$add": {"logins": 1},
    }
    assert event["platform"] == "iOS"


def test_amplitude_needs_a_user_or_device_id() -> None:
    with pytest.raises(ValueError, match="user_id or a device_id"):
        amplitude.event_of({"event_type": "x", "user_id": ""})
    with pytest.raises(ValueError, match="user_id or a device_id"):
        amplitude.identification({"user_properties": {"a": 1}})
