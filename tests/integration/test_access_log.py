"""One structured log line per request, with what an operator needs to follow it."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import msgspec
from structlog.testing import capture_logs

from cdpd.app import running
from cdpd.config import Config
from tests.helpers import WRITE_KEY, basic_auth


async def test_one_line_per_request(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    batch = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-1"},
            {"type": "track", "userId": "u1", "messageId": "m-2"},
        ]
    }
    with capture_logs() as captured:
        async with running(make_config()) as server:
            headers = {"Authorization": basic_auth(WRITE_KEY), "X-Request-Id": "trace-42"}
            async with http.post(f"{server.url}/v1/batch", json=batch, headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["X-Request-Id"] == "trace-42"
            async with http.post(f"{server.url}/v1/track", json={}) as resp:
                assert resp.status == 401
                generated_id = resp.headers["X-Request-Id"]
    lines = [line for line in captured if line["event"] == "request"]
    assert len(lines) == 2
    ok, refused = lines
    assert ok["request_id"] == "trace-42"
    assert (ok["source"], ok["accepted"], ok["rejected"], ok["duplicates"]) == ("website", 1, 1, 0)
    assert ok["reject_reasons"] == ["missing_event"]
    assert (ok["method"], ok["path"], ok["status"]) == ("POST", "/v1/batch", 200)
    assert ok["duration_ms"] >= 0
    assert ok["log_level"] == "info"
    assert (refused["request_id"], refused["status"]) == (generated_id, 401)
    assert refused["error"] == "missing_write_key"


async def test_access_log_can_be_turned_off(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    with capture_logs() as captured:
        async with (
            running(make_config("[logging]\naccess_log = false\n")) as server,
            http.get(f"{server.url}/health") as resp,
        ):
            assert resp.status == 200
    assert [line for line in captured if line["event"] == "request"] == []


async def test_access_log_of_errors_only(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    event = {"userId": "u1", "event": "Signed Up"}
    headers = {"Authorization": basic_auth(WRITE_KEY)}
    with capture_logs() as captured:
        async with running(make_config('[logging]\naccess_log = "errors"\n')) as server:
            async with http.post(f"{server.url}/v1/track", json=event, headers=headers) as resp:
                assert resp.status == 200
            async with http.post(f"{server.url}/v1/track", json=event) as resp:
                assert resp.status == 401
    lines = [line for line in captured if line["event"] == "request"]
    assert [(line["path"], line["status"], line["error"]) for line in lines] == [
        ("/v1/track", 401, "missing_write_key")
    ]


async def test_the_settings_path_logs_no_write_key_in_full(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    config = make_config('[[sources]]\nname = "browser"\nwrite_key = "wk_browser_0123456789"\n')
    with capture_logs() as captured:
        async with running(config) as server:
            for key in ("wk_browser_0123456789", "wk_unknown_9876543210"):
                async with http.get(f"{server.url}/v1/projects/{key}/settings") as resp:
                    assert resp.status in (200, 404)
    paths = [line["path"] for line in captured if line["event"] == "request"]
    assert paths == ["/v1/projects/wk_b.../settings", "/v1/projects/wk_u.../settings"]
    assert not [line for line in captured if "0123456789" in repr(line)]


async def test_a_settings_document_naming_the_request_host_is_kept_from_shared_caches(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    """Without `public_url` the document holds the Host header the client sent: a forged one,
    stored by a shared cache, would send every browser's events elsewhere."""
    async with running(make_config()) as server:
        forged = {"Host": "attacker.example"}
        url = f"{server.url}/v1/projects/{WRITE_KEY}/settings"
        async with http.get(url, headers=forged) as resp:
            body = await resp.json()
            assert body["integrations"]["Segment.io"]["apiHost"] == "attacker.example/v1"
            assert resp.headers["Cache-Control"] == "private, max-age=60"
            assert "Host" in resp.headers["Vary"]
    config = make_config()
    public = msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, public_url="https://cdp.example")
    )
    async with running(public) as server:
        url = f"{server.url}/v1/projects/{WRITE_KEY}/settings"
        async with http.get(url, headers={"Host": "attacker.example"}) as resp:
            body = await resp.json()
            assert body["integrations"]["Segment.io"]["apiHost"] == "cdp.example/v1"
            assert resp.headers["Cache-Control"] == "public, max-age=60"
