"""A local HTTP receiver with scripted answers, standing in for a destination's API."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

Answer = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


class Received(msgspec.Struct, frozen=True):
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def messages(self) -> list[dict[str, Any]]:
        decoded = msgspec.json.decode(self.body)
        return decoded["batch"] if isinstance(decoded, dict) and "batch" in decoded else [decoded]


def status(code: int, headers: dict[str, str] | None = None, body: str = "") -> Answer:
    async def answer(_: web.Request, __: bytes) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text=body)

    return answer


def hold(release: asyncio.Event, then: int = 200) -> Answer:
    """Keep the request waiting until `release` is set (a slow or hung destination)."""

    async def answer(_: web.Request, __: bytes) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=then)

    return answer


class Sink:
    """Answers from `script` in order (then `default`); `by_message` answers per messageId."""

    def __init__(self, default: Answer | None = None) -> None:
        self.received: list[Received] = []  # answered requests
        self.arrived = 0  # requests that reached the sink, answered or not
        self.script: deque[Answer] = deque()
        self.by_message: dict[str, deque[Answer]] = {}
        self.default = default or status(200)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Sink:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for r in self.received if 200 <= r.status < 300 for m in r.messages]

    @property
    def message_ids(self) -> list[str]:
        return [m["messageId"] for m in self.messages]

    async def wait_for(self, predicate: Callable[[Sink], bool], timeout_s: float = 30) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_for_requests(self, count: int, timeout_s: float = 30) -> None:
        """Until `count` requests have arrived (whether answered yet or not)."""
        await self.wait_for(lambda sink: sink.arrived >= count, timeout_s)

    async def wait_for_delivered(self, count: int, timeout_s: float = 30) -> None:
        await self.wait_for(lambda sink: len(sink.messages) >= count, timeout_s)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with self._changed:
            self.arrived += 1
            self._changed.notify_all()
        answer = self._answer_for(body)
        response = await answer(request, body)
        async with self._changed:
            self.received.append(Received(dict(request.headers), body, response.status))
            self._changed.notify_all()
        return response

    def _answer_for(self, body: bytes) -> Answer:
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            decoded = {}
        message_id = decoded.get("messageId") if isinstance(decoded, dict) else None
        queue = self.by_message.get(message_id or "")
        if queue:
            return queue.popleft()
        if self.script:
            return self.script.popleft()
        return self.default
