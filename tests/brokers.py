"""Helpers for the broker destination tests: where the local brokers are, names no other test
uses, a TCP proxy that can play a broker that is down, and the Segment examples posted and
read back."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path
from typing import Any, Self

import aiohttp
import msgspec

from cdpd.app import Running
from cdpd.delivery.lane import Lane
from tests import spec_examples
from tests.helpers import query
from tests.integration.test_delivery import delivered, send


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


async def post_examples(http: aiohttp.ClientSession, server: Running, destination: str) -> None:
    """Post every Segment spec example and wait until all are delivered."""
    examples = list(spec_examples.ALL.values())
    await send(http, server, examples)
    await delivered(server.delivery.lanes[destination], len(examples))


def stored(data_dir: Path) -> dict[str, str]:
    """{messageId: the JSON cdpd stored}, which is what a whole-message publish sends."""
    return dict(query(data_dir, "SELECT message_id, payload FROM messages"))


def attempts(data_dir: Path) -> list[tuple[Any, ...]]:
    return query(data_dir, "SELECT attempt, status, error, outcome FROM attempts ORDER BY id")


def decode(data: bytes | str) -> Any:
    return msgspec.json.decode(data)


class Proxy:
    """A TCP proxy in front of a broker, on a port of its own. `stop()` closes the port, as a
    broker that is down would be (connections are refused), and `start()` opens it again;
    `cut()` drops the connections that are open."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._open -= {writer, up_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


async def settled(lane: Lane, count: int) -> None:
    """Wait until `count` outcomes (delivered, retrying or dead) have been recorded."""
    stats = lane.stats
    async with asyncio.timeout(10), stats.recorded:
        await stats.recorded.wait_for(lambda: stats.delivered + stats.dead + stats.retried >= count)
