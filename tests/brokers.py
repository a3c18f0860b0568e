"""Helpers for the broker and file destination tests: a cdpd run with one destination until
its messages are delivered, names no other test uses, a TCP proxy that can play a broker that
is down (and the run that takes a destination through it), and the outbox read back."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiohttp
import msgspec

from cdpd.app import Running, running
from cdpd.delivery.lane import Lane
from tests import spec_examples
from tests.helpers import FakeClock, query
from tests.integration.test_delivery import MakeConfig, delivered, deliveries, recorded, send, track

Wait = Callable[[Lane, int], Coroutine[Any, Any, None]]

# Every Segment spec example, one of each type.
EXAMPLES = list(spec_examples.ALL.values())


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


@dataclass
class Deliver:
    """Runs a cdpd with a destination (a `[[destinations]]` entry) and posts to it."""

    make_config: MakeConfig
    http: aiohttp.ClientSession
    data_dir: Path

    def running(
        self, destination: str, clock: FakeClock | None = None
    ) -> AbstractAsyncContextManager[Running]:
        return running(self.make_config(destination), clock=clock)

    @asynccontextmanager
    async def posting(
        self, destination: str, messages: list[dict[str, Any]], clock: FakeClock | None = None
    ) -> AsyncIterator[tuple[Running, Lane]]:
        """A cdpd with `destination` that `messages` have been posted to: the server and the
        destination's lane, while it runs."""
        async with self.running(destination, clock) as server:
            (lane,) = server.delivery.lanes.values()
            await send(self.http, server, messages)
            yield server, lane

    async def __call__(
        self,
        destination: str,
        messages: list[dict[str, Any]],
        *,
        count: int | None = None,
        wait: Wait = delivered,
        clock: FakeClock | None = None,
    ) -> None:
        """Post `messages` and stop the cdpd once its lane has delivered `count` of them (all,
        unless told), or with `wait=settled`, once it has recorded that many outcomes."""
        async with self.posting(destination, messages, clock) as (_, lane):
            await wait(lane, len(messages) if count is None else count)


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
    async with asyncio.timeout(30), stats.recorded:
        await stats.recorded.wait_for(lambda: stats.delivered + stats.dead + stats.retried >= count)


async def down_then_back(
    deliver: Deliver, broker: tuple[str, int], destination: Callable[[int], str]
) -> int:
    """Take a destination through a proxy in front of `broker` (`destination(port)` is its entry)
    and return the proxy's port: track m1 is sent while the broker is down (one attempt,
    retrying), delivered once it is up and the backoff has passed; then the held connection is
    cut and m2 is delivered on a new one."""
    clock = FakeClock()
    async with Proxy(broker) as proxy:
        await proxy.stop()
        async with deliver.posting(destination(proxy.port), [track(1)], clock) as (server, lane):
            await recorded(lane, 1)
            assert deliveries(deliver.data_dir, lane.name) == [("m1", "retrying", 1, None)]
            await proxy.start()
            clock.advance(300)
            await delivered(lane, 1)
            proxy.cut()  # the held connection dies: the next send opens another
            await send(deliver.http, server, [track(2)])
            await settled(lane, 3)
            if lane.stats.delivered < 2:  # the cut was found by the send, not before it
                clock.advance(300)
            await delivered(lane, 2)
    return proxy.port
