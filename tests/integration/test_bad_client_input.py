"""Bad client input (a garbage request line, a bad Content-Length, a body that does not decode)
is the client's fault: a rate-limited warning without a traceback, never an error line; and
every answer cdpd makes carries X-Request-Id."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Callable

import aiohttp
from structlog.testing import capture_logs

from cdpd import logs
from cdpd.app import running
from cdpd.config import Config
from tests.helpers import WRITE_KEY, basic_auth

AUTH = basic_auth(WRITE_KEY).encode()
BAD_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH
    + b"\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
]  # fmt: skip


async def _raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    return answer


async def test_bad_requests_are_one_warning_without_a_traceback(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    handler = logs.FromLogging()
    logging.getLogger().addHandler(handler)
    try:
        with capture_logs() as logged:
            async with running(make_config()) as server:
                for _ in range(3):
                    for request in BAD_REQUESTS:
                        answer = await _raw(server.url, request)
                        assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
                async with http.get(f"{server.url}/health") as response:
                    assert response.status == 200
    finally:
        logging.getLogger().removeHandler(handler)
    assert [e for e in logged if e["log_level"] in ("error", "critical")] == []
    assert [e for e in logged if "exc_info" in e] == []
    warnings = [
        e for e in logged if e["event"] == "bad_client_input" and e["log_level"] == "warning"
    ]
    assert len(warnings) == 1  # the rest within the interval are counted, at debug level


async def test_every_answer_of_cdpd_carries_a_request_id(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    async with running(make_config()) as server:
        url = server.url
        body = gzip.compress(b"{}")[:-4]  # a gzip body cut short
        headers = {"Authorization": basic_auth(WRITE_KEY), "Content-Encoding": "gzip"}
        requests = [
            http.get(f"{url}/health"),
            http.get(f"{url}/nothing-here"),
            http.get(f"{url}/v1/track"),
            http.options(f"{url}/v1/track", headers={"Origin": "https://a.example"}),
            http.get(f"{url}/admin/deliveries"),
            http.get(f"{url}/metrics"),
            http.post(
                f"{url}/v1/track", data=b"{", headers={"Authorization": basic_auth(WRITE_KEY)}
            ),
            http.post(f"{url}/v1/track", data=body, headers=headers),
        ]
        for request in requests:
            async with request as response:
                assert response.headers.get("X-Request-Id"), (response.url, response.status)
