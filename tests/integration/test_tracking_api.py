"""The Tracking API against a real cdpd on an ephemeral port, checked through the outbox file."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from cdpd.app import Running, running
from tests.helpers import (
    OTHER_WRITE_KEY,
    WRITE_KEY,
    basic_auth,
    query,
    rejects,
    stored_payloads,
)

AUTH = {"Authorization": basic_auth(WRITE_KEY)}
SINGLE_PATHS = {
    "identify": {"userId": "u1", "traits": {"email": "a@example.com"}},
    "track": {"userId": "u1", "event": "Signed Up"},
    "page": {"anonymousId": "a1", "name": "Home"},
    "screen": {"userId": "u1", "name": "Settings"},
    "group": {"userId": "u1", "groupId": "g1"},
    "alias": {"userId": "u1", "previousId": "a1"},
}
SHORT = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias"}


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with http.post(url, data=data, headers=AUTH if headers is None else headers) as resp:
        text = await resp.read()
        try:
            payload = msgspec.json.decode(text)
        except msgspec.DecodeError:
            payload = text
        return resp.status, payload, resp


def track(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"u{n}",
        "event": "Order Completed",
        "messageId": f"m-{n}",
        **extra,
    }


# -- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SINGLE_PATHS))
async def test_single_message_paths(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path, path: str
) -> None:
    status, body, _ = await post(http, f"{cdpd.url}/v1/{path}", SINGLE_PATHS[path])
    assert (status, body) == (200, {"success": True})
    (stored,) = stored_payloads(data_dir)
    assert stored["type"] == path
    assert "ip" not in stored.get("context", {})


@pytest.mark.parametrize("short", sorted(SHORT))
async def test_browser_short_paths_fill_the_ip(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path, short: str
) -> None:
    kind = SHORT[short]
    body = {**SINGLE_PATHS[kind], "writeKey": WRITE_KEY}
    status, _, _ = await post(http, f"{cdpd.url}/v1/{short}", body, {"Content-Type": "text/plain"})
    assert status == 200
    (stored,) = stored_payloads(data_dir)
    assert stored["type"] == kind
    assert stored["context"]["ip"] == "127.0.0.1"
    assert "writeKey" not in stored


@pytest.mark.parametrize("path", ["batch", "import", "b"])
async def test_batch_paths(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path, path: str
) -> None:
    body = {"batch": [track(1), track(2)], "sentAt": "2026-01-01T00:00:00Z"}
    status, _, _ = await post(http, f"{cdpd.url}/v1/{path}", body)
    assert status == 200
    stored = stored_payloads(data_dir)
    assert [m["messageId"] for m in stored] == ["m-1", "m-2"]
    assert ("ip" in stored[0].get("context", {})) == (path == "b")


async def test_one_received_at_per_request(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    await post(http, f"{cdpd.url}/v1/batch", {"batch": [track(n) for n in range(50)]})
    assert len({m["receivedAt"] for m in stored_payloads(data_dir)}) == 1


async def test_telemetry_is_accepted_and_dropped(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    metrics = {"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1}]}
    status, body, _ = await post(http, f"{cdpd.url}/v1/m", metrics, {"Content-Type": "text/plain"})
    assert (status, body) == (200, {"success": True})
    assert query(data_dir, "SELECT count(*) FROM messages") == [(0,)]


async def test_health(cdpd: Running, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{cdpd.url}/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_unknown_path_and_wrong_method_get_json_errors(
    cdpd: Running, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{cdpd.url}/v2/track") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"
    async with http.get(f"{cdpd.url}/v1/track") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "OPTIONS, POST"
        assert set(await resp.json()) == {"code", "message"}


# -- CORS and the settings document ------------------------------------------------------------


async def test_preflight_echoes_the_origin(cdpd: Running, http: aiohttp.ClientSession) -> None:
    headers = {
        "Origin": "https://shop.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-retry-count",
    }
    async with http.options(f"{cdpd.url}/v1/t", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        allowed = {
            h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"authorization", "content-type", "x-retry-count"} <= allowed
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]


async def test_post_and_errors_carry_cors_headers(
    cdpd: Running, http: aiohttp.ClientSession
) -> None:
    origin = {"Origin": "https://shop.example.com", "Content-Type": "text/plain"}
    _, _, ok = await post(
        http, f"{cdpd.url}/v1/t", {**SINGLE_PATHS["track"], "writeKey": WRITE_KEY}, origin
    )
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    status, _, bad = await post(http, f"{cdpd.url}/v1/t", {"writeKey": "nope"}, origin)
    assert status == 401
    assert bad.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"


async def test_settings_document(cdpd: Running, http: aiohttp.ClientSession) -> None:
    headers = {"Origin": "https://shop.example.com"}
    async with http.get(f"{cdpd.url}/v1/projects/{WRITE_KEY}/settings", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
        settings = await resp.json()
    segment = settings["integrations"]["Segment.io"]
    assert segment["apiKey"] == WRITE_KEY
    assert segment["apiHost"] == cdpd.url.removeprefix("http://") + "/v1"
    async with http.get(f"{cdpd.url}/v1/projects/wk_unknown/settings") as resp:
        assert resp.status == 404


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body_key", "envelope_key", "source"),
    [
        ({"Authorization": basic_auth(WRITE_KEY)}, None, None, "website"),
        ({"Authorization": basic_auth(WRITE_KEY, colon=False)}, None, None, "website"),
        ({}, None, OTHER_WRITE_KEY, "backend"),
        ({}, OTHER_WRITE_KEY, None, "backend"),
        ({"Authorization": "Bearer some.oauth.token"}, None, OTHER_WRITE_KEY, "backend"),
    ],
)
async def test_write_key_forms(
    cdpd: Running,
    http: aiohttp.ClientSession,
    data_dir: Path,
    headers: dict[str, str],
    body_key: str | None,
    envelope_key: str | None,
    source: str,
) -> None:
    item = track(1) if body_key is None else track(1, writeKey=body_key)
    body: dict[str, Any] = {"batch": [item]}
    if envelope_key:
        body["writeKey"] = envelope_key
    status, _, _ = await post(http, f"{cdpd.url}/v1/batch", body, headers)
    assert status == 200
    assert query(data_dir, "SELECT source FROM messages") == [(source,)]


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, {"batch": [track(1)]}, 401, "missing_write_key"),
        (
            {"Authorization": basic_auth("wk_wrong")},
            {"batch": [track(1)]},
            401,
            "invalid_write_key",
        ),
        ({}, {"batch": [track(1)], "writeKey": "wk_wrong"}, 401, "invalid_write_key"),
        ({}, {"batch": [track(1)], "writeKey": "wk_retired"}, 403, "source_disabled"),
        ({"Authorization": "Basic !!"}, {"batch": [track(1)]}, 401, "invalid_authorization"),
    ],
)
async def test_refused_keys_get_code_and_message(
    cdpd: Running,
    http: aiohttp.ClientSession,
    data_dir: Path,
    headers: dict[str, str],
    body: Any,
    status: int,
    code: str,
) -> None:
    got, payload, resp = await post(http, f"{cdpd.url}/v1/batch", body, headers)
    assert got == status
    assert payload["code"] == code
    assert payload["message"]
    assert resp.content_type == "application/json"
    assert query(data_dir, "SELECT count(*) FROM messages") == [(0,)]


# -- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "text/plain", None]
)
async def test_json_whatever_the_content_type(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path, content_type: str | None
) -> None:
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    status, _, _ = await post(http, f"{cdpd.url}/v1/track", SINGLE_PATHS["track"], headers)
    assert status == 200
    assert len(stored_payloads(data_dir)) == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bodies(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path, encoding: str
) -> None:
    raw = msgspec.json.encode({"batch": [track(n) for n in range(100)]})
    data = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    status, _, _ = await post(
        http, f"{cdpd.url}/v1/batch", data, {**AUTH, "Content-Encoding": encoding}
    )
    assert status == 200
    assert len(stored_payloads(data_dir)) == 100


async def test_chunked_body(cdpd: Running, http: aiohttp.ClientSession, data_dir: Path) -> None:
    raw = msgspec.json.encode({"batch": [track(n) for n in range(300)]})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1000):
            yield raw[start : start + 1000]

    async with http.post(f"{cdpd.url}/v1/batch", data=chunks(), headers=AUTH) as resp:
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert resp.status == 200
    assert len(stored_payloads(data_dir)) == 300


@pytest.mark.parametrize(
    ("path", "body", "code", "says"),
    [
        ("track", b'{"userId": "u1", "event": ', "invalid_json", "not valid JSON"),
        ("batch", b"not json at all", "invalid_json", "not valid JSON"),
        ("batch", b'{"batch": "x"}', "invalid_request", "Expected `array`, got `str`"),
        ("batch", b'{"events": []}', "invalid_request", "missing required field `batch`"),
        ("track", b"[1, 2]", "invalid_request", "Expected `object`, got `array`"),
    ],
)
async def test_malformed_requests_are_400_and_store_nothing(
    cdpd: Running,
    http: aiohttp.ClientSession,
    data_dir: Path,
    path: str,
    body: bytes,
    code: str,
    says: str,
) -> None:
    status, payload, _ = await post(http, f"{cdpd.url}/v1/{path}", body)
    assert status == 400
    assert payload["code"] == code
    assert says in payload["message"]
    assert query(data_dir, "SELECT count(*) FROM messages") == [(0,)]


async def test_oversize_request_is_400(cdpd: Running, http: aiohttp.ClientSession) -> None:
    body = {"batch": [track(n, properties={"pad": "x" * 1000}) for n in range(600)]}
    status, payload, _ = await post(http, f"{cdpd.url}/v1/b", body)  # the browser's batch path
    assert status == 400
    assert payload["code"] == "request_too_large"
    assert "512000 bytes" in payload["message"]
    # /v1/batch takes RudderStack's 4 MiB batches (and one more message), not more.
    status, _, _ = await post(http, f"{cdpd.url}/v1/batch", body)
    assert status == 200
    body = {"batch": [track(n, properties={"pad": "x" * 1000}) for n in range(4400)]}
    data = io.BytesIO(msgspec.json.encode(body))  # (aiohttp warns about large raw bytes)
    async with http.post(f"{cdpd.url}/v1/batch", data=data, headers=AUTH) as resp:
        assert resp.status == 400
        payload = await resp.json()
    assert payload["code"] == "request_too_large"
    assert "4259840 bytes" in payload["message"]


async def test_oversize_chunked_request_is_400(cdpd: Running, http: aiohttp.ClientSession) -> None:
    async def endless() -> AsyncIterator[bytes]:
        yield b'{"batch": ['
        for n in range(9000):  # past /v1/batch's 4 MiB
            yield msgspec.json.encode(track(n, properties={"pad": "x" * 500})) + b","

    async with http.post(f"{cdpd.url}/v1/batch", data=endless(), headers=AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "request_too_large"


async def test_gzip_bomb_is_400_without_inflating_it(
    cdpd: Running, http: aiohttp.ClientSession
) -> None:
    # 200 MB of zeros compress to about 200 KB; cdpd must stop at its limit (/v1/batch: 4 MiB
    # and one message) of output.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"0" * (1 << 20)
    bomb = b"".join(compressor.compress(block) for _ in range(200)) + compressor.flush()
    before = _peak_rss_kb()
    status, payload, _ = await post(
        http, f"{cdpd.url}/v1/batch", bomb, {**AUTH, "Content-Encoding": "gzip"}
    )
    assert status == 400
    assert payload["code"] == "request_too_large"
    assert _peak_rss_kb() - before < 50_000


@pytest.mark.parametrize(
    ("encoding", "data", "code", "says"),
    [
        ("gzip", b"\x1f\x8b\x08\x00garbage", "invalid_json", "not valid JSON once gzip-decoded"),
        ("deflate", b"garbage that is not deflate", "invalid_body_encoding", "deflate"),
    ],
)
async def test_corrupt_compressed_bodies_are_400(
    cdpd: Running, http: aiohttp.ClientSession, encoding: str, data: bytes, code: str, says: str
) -> None:
    status, payload, _ = await post(
        http, f"{cdpd.url}/v1/batch", data, {**AUTH, "Content-Encoding": encoding}
    )
    assert status == 400
    assert payload["code"] == code
    assert says in payload["message"]


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# -- per-message problems --------------------------------------------------------------------


async def test_bad_messages_are_rejected_and_the_rest_accepted(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    batch = [
        track(1),
        {"type": "track", "event": "No Ids", "messageId": "m-noid"},
        {"type": "track", "userId": "u3", "messageId": "m-noevent"},
        {"type": "group", "userId": "u4", "messageId": "m-nogroup"},
        {"type": "alias", "userId": "u5", "messageId": "m-noprev"},
        track(6, properties={"pad": "x" * 40_000}),
        track(7, userId=["not", "a", "string"]),
        "just a string",
        track(9),
    ]
    status, body, _ = await post(http, f"{cdpd.url}/v1/batch", {"batch": batch})
    assert (status, body) == (200, {"success": True})
    assert [m["messageId"] for m in stored_payloads(data_dir)] == ["m-1", "m-9"]
    codes = [code for code, _, _ in rejects(data_dir)]
    assert codes == [
        "no_user_anon_id",
        "missing_event",
        "missing_group_id",
        "missing_previous_id",
        "event_too_large",
        "invalid_field",
        "invalid_message",
    ]
    assert rejects(data_dir)[5][1] == "userId: expected `int | str | null`, got `array`"
    assert cdpd.ingest.rejected["missing_event"] == 1


async def test_unreadable_numbers_and_header_breaking_ids_reject_only_their_message(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    body = (
        b'{"batch":[{"type":"track","userId":"u","event":"E","messageId":"big",'
        b'"properties":{"total":1e400}},'
        b'{"type":"track","userId":"u","event":"E","messageId":"long",'
        b'"properties":{"n":' + b"7" * 5000 + b"}},"
        b'{"type":"track","userId":"u","event":"E","messageId":"m\\r\\nX-Evil: 1"},'
        b'{"type":"track","userId":"u","event":"E","messageId":"good",'
        b'"properties":{"n":18446744073709551615,"nul":"a\\u0000b"}}]}'
    )
    status, payload, _ = await post(http, f"{cdpd.url}/v1/batch", body)
    assert (status, payload) == (200, {"success": True})
    assert query(data_dir, "SELECT message_id FROM messages") == [("good",)]
    assert rejects(data_dir) == [
        (
            "number_out_of_range",
            "properties: holds a number out of range; numbers must be 64-bit integers or doubles",
            "big",
        ),
        (
            "number_out_of_range",
            "properties: holds a number out of range; numbers must be 64-bit integers or doubles",
            "long",
        ),
        ("invalid_message_id", "messageId holds the control character U+000D", "m\r\nX-Evil: 1"),
    ]


async def test_envelope_fields_of_the_wrong_type_are_ignored_not_fatal(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    body = {"batch": [track(1), track(2)], "sentAt": "later", "context": [], "integrations": 1}
    status, payload, _ = await post(http, f"{cdpd.url}/v1/batch", body)
    assert (status, payload) == (200, {"success": True})
    stored = stored_payloads(data_dir)
    assert [m["messageId"] for m in stored] == ["m-1", "m-2"]
    assert "sentAt" not in stored[0]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("batch", b'{"batch":[{"type":"track","userId":"u","event":"\xff"},'
         b'{"type":"track","userId":"u","event":"ok","messageId":"good"}]}'),
        ("track", b'{"userId":"u","event":"E","properties":{"name":"caf\xe9"}}'),
    ],
)  # fmt: skip
async def test_invalid_utf8_rejects_only_its_message(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path, path: str, body: bytes
) -> None:
    status, payload, _ = await post(http, f"{cdpd.url}/v1/{path}", body)
    assert (status, payload) == (200, {"success": True})
    assert [code for code, _, _ in rejects(data_dir)] == ["invalid_json"]
    assert "UTF-8" in rejects(data_dir)[0][1]
    expected = [("good",)] if path == "batch" else []
    assert query(data_dir, "SELECT message_id FROM messages") == expected


async def test_non_ascii_basic_credential_is_a_401(
    cdpd: Running, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": "Basic d2tf\u00e9"}
    status, payload, _ = await post(http, f"{cdpd.url}/v1/track", {"userId": "u"}, headers)
    assert status == 401
    assert payload["code"] == "invalid_authorization"


async def test_past_2500_messages_each_extra_one_is_rejected(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    batch = [{"type": "identify", "userId": f"u{n}", "messageId": f"m{n}"} for n in range(2503)]
    status, _, _ = await post(http, f"{cdpd.url}/v1/batch", {"batch": batch})
    assert status == 200
    assert query(data_dir, "SELECT count(*) FROM messages") == [(2500,)]
    assert query(data_dir, "SELECT reason_code, count(*) FROM rejects GROUP BY 1") == [
        ("too_many_events", 3)
    ]


# -- deduplication ---------------------------------------------------------------------------


async def test_duplicate_message_ids_are_stored_once(
    cdpd: Running, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    first = {"batch": [track(1), track(2), track(1)]}
    assert (await post(http, f"{cdpd.url}/v1/batch", first))[0] == 200
    again = {"batch": [track(2), track(3)]}
    assert (await post(http, f"{cdpd.url}/v1/batch", again))[0] == 200
    rows = query(data_dir, "SELECT message_id FROM messages ORDER BY seq")
    assert rows == [("m-1",), ("m-2",), ("m-3",)]
    assert cdpd.ingest.duplicates == 2
    assert cdpd.ingest.accepted == 3


async def test_dedup_window_can_be_turned_off(
    make_config: Any, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    config = make_config()
    config = msgspec.structs.replace(
        config, storage=msgspec.structs.replace(config.storage, dedup_window_s=0)
    )
    async with running(config) as server:
        for _ in range(2):
            await post(
                http, f"{server.url}/v1/track", {"userId": "u", "event": "E", "messageId": "m"}
            )
    assert query(data_dir, "SELECT count(*) FROM messages") == [(2,)]
