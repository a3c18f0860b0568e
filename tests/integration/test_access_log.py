"""One structured log line per request, with what an operator needs to follow it."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
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
