from typing import Any

import msgspec
import pytest

from cdpd.ingest.normalize import (
    Rejection,
    RequestFacts,
    _may_hold_numbers_out_of_range,
    normalize,
)
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms

RECEIVED_MS = 1_764_325_600_000  # 2025-11-28T10:26:40.000Z
RECEIVED = format_ms(RECEIVED_MS)


def facts(**changes: Any) -> RequestFacts:
    base = RequestFacts(
        source="web",
        request_id="r-1",
        received_at_ms=RECEIVED_MS,
        received_at=RECEIVED,
        sent_at_ms=None,
        sent_at=None,
        context=None,
        integrations=None,
        client_ip="203.0.113.9",
        fill_ip=False,
    )
    return msgspec.structs.replace(base, **changes)


def run(
    message: Any, path_type: str | None = "track", **fact_changes: Any
) -> OutboxRow | Rejection:
    raw = msgspec.json.encode(message)
    return normalize(raw, facts(**fact_changes), path_type=path_type, max_bytes=32 * 1024)


def accepted(message: Any, path_type: str | None = "track", **fact_changes: Any) -> dict[str, Any]:
    result = run(message, path_type, **fact_changes)
    assert isinstance(result, OutboxRow), result
    payload: dict[str, Any] = msgspec.json.decode(result.payload)
    return payload


def rejected(message: Any, path_type: str | None = "track", **fact_changes: Any) -> Rejection:
    result = run(message, path_type, **fact_changes)
    assert isinstance(result, Rejection), result
    return result


def test_skew_correction_uses_the_message_sent_at() -> None:
    out = accepted(
        {
            "userId": "u1",
            "event": "Signed Up",
            "timestamp": "2025-11-28T10:00:00.000Z",
            "sentAt": "2025-11-28T10:00:05.000Z",
        }
    )
    # The device clock ran 5 s between the call and the send; it arrived at 10:26:40.
    assert out["timestamp"] == "2025-11-28T10:26:35.000Z"
    assert out["originalTimestamp"] == "2025-11-28T10:00:00.000Z"
    assert out["receivedAt"] == RECEIVED
    assert out["sentAt"] == "2025-11-28T10:00:05.000Z"


def test_skew_correction_with_the_envelope_sent_at_and_offsets() -> None:
    # A device clock one hour behind: the call at 09:25:39.500Z, the send one second later.
    sent_ms = RECEIVED_MS - 3_600_000 - 59_500
    out = accepted(
        {"userId": "u1", "event": "E", "timestamp": "2025-11-28T11:25:39.500+02:00"},
        sent_at_ms=sent_ms,
        sent_at=format_ms(sent_ms),
    )
    assert out["timestamp"] == "2025-11-28T10:26:39.000Z"
    assert out["originalTimestamp"] == "2025-11-28T11:25:39.500+02:00"
    assert out["sentAt"] == format_ms(sent_ms)


def test_without_sent_at_the_timestamp_is_kept() -> None:
    out = accepted({"userId": "u1", "event": "E", "timestamp": "2020-01-01T00:00:00Z"})
    assert out["timestamp"] == "2020-01-01T00:00:00.000Z"


def test_without_any_timestamp_it_is_the_receive_time() -> None:
    out = accepted({"userId": "u1", "event": "E"})
    assert out["timestamp"] == RECEIVED
    assert "originalTimestamp" not in out


def test_message_id_is_filled_and_kept() -> None:
    assert len(accepted({"userId": "u1", "event": "E"})["messageId"]) == 36
    assert accepted({"userId": "u1", "event": "E", "messageId": "m-1"})["messageId"] == "m-1"


def test_message_id_over_100_characters_is_rejected() -> None:
    result = rejected({"userId": "u1", "event": "E", "messageId": "x" * 101})
    assert result.code == "message_id_too_long"


@pytest.mark.parametrize("message_id", ["m\n1", "m\r\nX-Evil: 1", "m\x00", "\x7f", "m\x85"])
def test_message_id_with_a_control_character_is_rejected(message_id: str) -> None:
    result = rejected({"userId": "u1", "event": "E", "messageId": message_id})
    assert result.code == "invalid_message_id"
    assert result.reason.startswith("messageId holds the control character U+")


@pytest.mark.parametrize(
    ("raw_value", "shown"),
    [
        (b"1e400", "a number out of range"),
        (b"-1.8e308", "a number out of range"),
        (b"1E+0400", "a number out of range"),
        (b"[0,\n  2.5e999\n]", "a number out of range"),
        (b"1" * 5000, "a number out of range"),
        (b"18446744073709551616", "the integer 18446744073709551616"),
        (b'[1, {"deep": -9223372036854775809}]', "the integer -9223372036854775809"),
    ],
)
def test_a_number_out_of_range_is_rejected(raw_value: bytes, shown: str) -> None:
    raw = b'{"userId":"u1","event":"E","messageId":"m-1","properties":{"n":' + raw_value + b"}}"
    result = normalize(raw, facts(), path_type="track", max_bytes=32 * 1024)
    assert isinstance(result, Rejection), result
    assert (result.code, result.message_id) == ("number_out_of_range", "m-1")
    assert result.reason == f"properties: holds {shown}; numbers must be 64-bit integers or doubles"


@pytest.mark.parametrize(
    "raw_value",
    [
        b"18446744073709551615",
        b"-9223372036854775808",
        b"1.7976931348623157e308",
        b"1e-400",
        b'"12345678901234567890123 e999"',
        b'"507f191e810c19729de860ea"',
        b"-2.5e-4000",
    ],
)
def test_numbers_in_range_and_look_alike_text_are_kept(raw_value: bytes) -> None:
    raw = b'{"userId":"u1","event":"E","properties":{"n":' + raw_value + b"}}"
    result = normalize(raw, facts(), path_type="track", max_bytes=32 * 1024)
    assert isinstance(result, OutboxRow), result
    assert raw_value in result.payload.encode()


@pytest.mark.parametrize(
    "raw_value",
    [b"1e400", b"-1.8e308", b"1E+0400", b"[0,\n  2.5e999\n]", b"1" * 400 + b".5", b"-" + b"9" * 19],
)
def test_the_quick_number_scan_flags_every_number_that_may_be_out_of_range(
    raw_value: bytes,
) -> None:
    assert _may_hold_numbers_out_of_range(b'{"properties":{"n":' + raw_value + b"}}")


@pytest.mark.parametrize(
    "message_id",
    [
        b"bench-0badcafe-1234567",
        b"ajs-next-1701234567890-4f1c2d8e",
        b"507f191e810c19729de860ea",
        b"12345678901234567890123",
        b"4f1c2d8e-9b7a-4e21-8c3d-5a6b7c8d9e0f",
    ],
)
def test_the_quick_number_scan_passes_ids_that_only_look_like_numbers(message_id: bytes) -> None:
    """Such ids would otherwise send nearly every message to the slow, exact check."""
    raw = b'{"messageId":"' + message_id + b'","properties":{"total":27.5,"n":-3}}'
    assert not _may_hold_numbers_out_of_range(raw)


def test_nulls_are_absent_and_the_write_key_is_stripped() -> None:
    out = accepted(
        {"userId": "u1", "anonymousId": None, "event": "E", "writeKey": "wk", "category": None},
        path_type="page",
    )
    assert "anonymousId" not in out
    assert "category" not in out
    assert "writeKey" not in out


def test_numeric_ids_become_text_and_unknown_fields_pass_through() -> None:
    out = accepted(
        {"userId": 42, "groupId": 7, "traits": {"n": 1}, "_metadata": {"bundled": []}},
        path_type="group",
    )
    assert out["userId"] == "42"
    assert out["groupId"] == "7"
    assert out["_metadata"] == {"bundled": []}


def test_the_path_sets_the_type() -> None:
    assert accepted({"userId": "u1", "type": "identify"}, path_type="page")["type"] == "page"


@pytest.mark.parametrize(
    ("message", "path_type", "code"),
    [
        ({"event": "E"}, "track", "no_user_anon_id"),
        ({"userId": "", "event": "E"}, "track", "no_user_anon_id"),
        ({"userId": "u1"}, "track", "missing_event"),
        ({"userId": "u1"}, "group", "missing_group_id"),
        ({"userId": "u1"}, "alias", "missing_previous_id"),
        ({"userId": "u1"}, None, "missing_type"),
        ({"userId": "u1", "type": "purchase"}, None, "invalid_field"),
        ({"userId": True, "event": "E"}, "track", "invalid_field"),
        ({"userId": "u1", "event": "E", "properties": []}, "track", "invalid_field"),
        ({"userId": "u1", "event": "E", "timestamp": "yesterday"}, "track", "invalid_field"),
        ([1, 2], "track", "invalid_message"),
    ],
)
def test_rules(message: Any, path_type: str | None, code: str) -> None:
    assert rejected(message, path_type).code == code


def test_wrong_type_reason_names_the_field() -> None:
    result = rejected({"userId": "u1", "event": "E", "properties": "cheap"})
    assert result.reason == "properties: expected `object | null`, got `str`"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"traits": 3, "userId": True}, "traits: expected `object | null`, got `int`"),
        ({"userId": True, "traits": 3}, "userId: expected `int | str | null`, got `bool`"),
        (
            {"userId": "u1", "context": [], "event": 1},
            "context: expected `object | null`, got `array`",
        ),
        (
            {"userId": "u1", "integrations": {}, "event": 1},
            "event: expected `str | null`, got `int`",
        ),
    ],
)
def test_the_first_field_at_fault_is_named(message: dict[str, Any], reason: str) -> None:
    assert rejected(message).reason == reason


def test_rejection_keeps_the_raw_message_and_its_id() -> None:
    result = rejected({"userId": "u1", "messageId": "m-9"})
    assert result.message_id == "m-9"
    assert msgspec.json.decode(result.payload) == {"userId": "u1", "messageId": "m-9"}


def test_oversize_message_is_rejected() -> None:
    raw = msgspec.json.encode({"userId": "u1", "event": "E", "properties": {"x": "y" * 40_000}})
    result = normalize(raw, facts(), path_type="track", max_bytes=32 * 1024)
    assert isinstance(result, Rejection)
    assert result.code == "event_too_large"


def test_invalid_json_is_rejected() -> None:
    result = normalize(b'{"userId": ', facts(), path_type="track", max_bytes=1000)
    assert isinstance(result, Rejection)
    assert result.code == "invalid_json"


def test_a_lone_surrogate_is_invalid_json_and_nul_text_is_kept() -> None:
    raw = b'{"userId":"u1","event":"E","properties":{"s":"\\ud800"}}'
    result = normalize(raw, facts(), path_type="track", max_bytes=1000)
    assert isinstance(result, Rejection)
    assert result.code == "invalid_json"
    raw = b'{"userId":"u1","event":"E","properties":{"s":"a\\u0000b","pair":"\\ud83d\\ude00"}}'
    result = normalize(raw, facts(), path_type="track", max_bytes=1000)
    assert isinstance(result, OutboxRow)
    assert '"s":"a\\u0000b"' in result.payload


def test_envelope_context_and_integrations_are_merged_under_the_message() -> None:
    env_context = msgspec.json.decode(
        b'{"library": {"name": "env"}, "locale": "en"}', type=dict[str, msgspec.Raw]
    )
    env_integrations = msgspec.json.decode(b'{"All": false}', type=dict[str, msgspec.Raw])
    out = accepted(
        {
            "userId": "u1",
            "event": "E",
            "context": {"locale": "fr"},
            "integrations": {"Slack": True},
        },
        context=env_context,
        integrations=env_integrations,
    )
    assert out["context"] == {"library": {"name": "env"}, "locale": "fr"}
    assert out["integrations"] == {"All": False, "Slack": True}


def test_ip_is_filled_on_browser_paths_only() -> None:
    assert accepted({"userId": "u1", "event": "E"}, fill_ip=True)["context"] == {
        "ip": "203.0.113.9"
    }
    assert "context" not in accepted({"userId": "u1", "event": "E"})


def test_ip_is_filled_when_direct_is_true_and_never_overwritten() -> None:
    direct = accepted({"userId": "u1", "event": "E", "context": {"direct": True}})
    assert direct["context"] == {"direct": True, "ip": "203.0.113.9"}
    own = accepted({"userId": "u1", "event": "E", "context": {"ip": "198.51.100.1"}}, fill_ip=True)
    assert own["context"] == {"ip": "198.51.100.1"}


def test_row_columns() -> None:
    row = run({"anonymousId": "a1", "name": "Home"}, path_type="page")
    assert isinstance(row, OutboxRow)
    assert (row.source, row.type, row.event, row.user_id, row.anonymous_id) == (
        "web",
        "page",
        "Home",
        None,
        "a1",
    )


def test_context_traits_are_the_traits_of_an_identify_without_traits() -> None:
    """RudderStack's SDKs send identify traits only as context.traits."""
    sent = {"userId": "u1", "context": {"traits": {"plan": "pro"}, "library": {"name": "x"}}}
    out = accepted(sent, "identify")
    assert out["traits"] == {"plan": "pro"}
    assert out["context"]["traits"] == {"plan": "pro"}
    group = accepted({**sent, "groupId": "g1"}, "group")
    assert group["traits"] == {"plan": "pro"}
    own = accepted({**sent, "traits": {"plan": "team"}}, "identify")
    assert own["traits"] == {"plan": "team"}  # a message's own traits win
    track = accepted({**sent, "event": "E"}, "track")
    assert "traits" not in track  # context.traits of a track stays context
    envelope_context = {"traits": msgspec.Raw(b'{"plan": "x"}')}
    envelope = accepted({"userId": "u1"}, "identify", context=envelope_context)
    assert envelope["traits"] == {"plan": "x"}  # the batch envelope's context counts too
