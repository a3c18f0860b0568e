"""The client limits one request at a time: header count and size, the body's time, idle
keep-alive connections, and the connection cap making room."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import msgspec

from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.web import CONNECTIONS
from tests.helpers import WRITE_KEY, basic_auth

# A bound on what the daemon answers or closes; each wait returns as soon as it does.
ANSWER_WITHIN_S = 30

MakeConfig = Callable[..., cdpd_config.Config]


@asynccontextmanager
async def serving(make_config: MakeConfig, **server: Any) -> AsyncIterator[Running]:
    config = make_config()
    config = msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, **server)
    )
    async with running(config) as daemon:
        yield daemon


async def connect(daemon: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(daemon.url)
    assert address.hostname is not None
    assert address.port is not None
    return await asyncio.open_connection(address.hostname, address.port)


def head(extra: str = "", body_bytes: int = 0) -> bytes:
    return (
        f"POST /v1/track HTTP/1.1\r\nHost: cdpd\r\nAuthorization: {basic_auth(WRITE_KEY)}\r\n"
        f"Content-Length: {body_bytes}\r\n{extra}\r\n"
    ).encode()


async def test_too_many_headers_is_a_400(make_config: MakeConfig) -> None:
    async with serving(make_config, max_headers=20) as daemon:
        reader, writer = await connect(daemon)
        writer.write(head("".join(f"X-H{n}: v\r\n" for n in range(30))))
        answer = await asyncio.wait_for(reader.read(), ANSWER_WITHIN_S)
        writer.close()
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert answer.endswith(b"Too many headers received")


async def test_headers_over_max_header_bytes_are_a_431(make_config: MakeConfig) -> None:
    async with serving(make_config, max_header_bytes=4096) as daemon:
        reader, writer = await connect(daemon)
        writer.write(head("".join(f"X-H{n}: {'v' * 500}\r\n" for n in range(10))))
        answer = await asyncio.wait_for(reader.read(), ANSWER_WITHIN_S)
        writer.close()
        assert daemon.app[CONNECTIONS].cut == {"headers_too_large": 1}
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"server.max_header_bytes" in answer


async def test_a_body_that_does_not_arrive_in_time_is_a_408(make_config: MakeConfig) -> None:
    async with serving(make_config, body_timeout_s=0.5) as daemon:
        reader, writer = await connect(daemon)
        body = b'{"userId": "u", "event": "E"}'
        writer.write(head(body_bytes=len(body)) + body[:5])
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), ANSWER_WITHIN_S)
        took_s = time.monotonic() - started
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request_timeout" in answer
    assert b"server.body_timeout_s" in answer
    # The timeout, then at most 2 s of lingering for the rest (aiohttp's own would be 10 s).
    assert 0.4 < took_s < 10


async def test_an_idle_keep_alive_connection_is_closed(make_config: MakeConfig) -> None:
    async with serving(make_config, keepalive_timeout_s=0.5) as daemon:
        reader, writer = await connect(daemon)
        writer.write(b"GET /health HTTP/1.1\r\nHost: cdpd\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        # The headers, the body, then the close.
        rest = await asyncio.wait_for(reader.read(), ANSWER_WITHIN_S)
        took_s = time.monotonic() - started
        writer.close()
    assert rest.endswith(b'{"status": "ok"}')
    assert took_s < 10  # aiohttp's own keep-alive would hold it 75 s


async def test_a_slow_head_is_cut_after_header_timeout_s(make_config: MakeConfig) -> None:
    async with serving(make_config, header_timeout_s=0.5) as daemon:
        reader, writer = await connect(daemon)
        writer.write(b"POST /v1/track HTTP/1.1\r\nHo")
        answer = await asyncio.wait_for(reader.read(), ANSWER_WITHIN_S)
        writer.close()
        assert daemon.app[CONNECTIONS].cut == {"header_timeout": 1}
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_at_the_connection_cap_a_slow_connection_makes_room(
    make_config: MakeConfig,
) -> None:
    async with serving(make_config, max_connections=3) as daemon:
        slow = [await connect(daemon) for _ in range(3)]
        for _, writer in slow:
            writer.write(b"POST /v1/track HTTP/1.1\r\n")
            await writer.drain()
        await asyncio.sleep(0.1)
        reader, writer = await connect(daemon)  # a real client, at the cap
        writer.write(b"GET /health HTTP/1.1\r\nHost: cdpd\r\n\r\n")
        served = await asyncio.wait_for(reader.readline(), ANSWER_WITHIN_S)
        assert served.startswith(b"HTTP/1.1 200")
        cut = await asyncio.wait_for(slow[0][0].read(), ANSWER_WITHIN_S)  # the oldest slow one
        for _, other in [*slow, (reader, writer)]:
            other.close()
        assert daemon.app[CONNECTIONS].cut == {"connection_limit": 1}
    assert cut.startswith(b"HTTP/1.1 503 ")
