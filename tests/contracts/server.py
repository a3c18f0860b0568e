"""The frame of a contract server: a local aiohttp app standing in for a vendor's API, which
records every request it answers and can be told to answer the next ones in a set way (a 429,
a 503) before its contract applies again."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

Handler = Callable[[web.Request, bytes], Awaitable[web.Response]]


class Request(msgspec.Struct, frozen=True):
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        headers=headers,
        content_type="application/json",
    )


class ContractServer:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.next_answers: deque[web.Response] = deque()  # answered first, whatever the contract
        self.url = ""
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    def routes(self) -> dict[str, Handler]:
        raise NotImplementedError

    async def __aenter__(self) -> ContractServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path, handler in self.routes().items():
            app.router.add_post(path, self._wrap(handler))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def on(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    def _wrap(self, handler: Handler) -> Handler:
        async def handle(request: web.Request, _: bytes = b"") -> web.Response:
            body = await request.read()
            if self.next_answers:
                response = self.next_answers.popleft()
            else:
                response = await handler(request, body)
            async with self._changed:
                self.requests.append(
                    Request(
                        request.path,
                        dict(request.query),
                        dict(request.headers),
                        body,
                        response.status,
                    )
                )
                self._changed.notify_all()
            return response

        return handle
