"""What every contract server shares: a real aiohttp server on 127.0.0.1, the requests it
accepted, the ones it refused (and why), looked up by path, and scripted answers that stand in
for the vendor's own trouble (a 429 with Retry-After, a 500). A server either answers every
request in `handle`, or names a handler for each path it serves in `routes`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Self

import msgspec
from aiohttp import web

Handler = Callable[[web.Request, bytes], Awaitable[web.Response]]


class Call(msgspec.Struct, frozen=True):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int
    answer: bytes

    @property
    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class Scripted(msgspec.Struct, frozen=True):
    status: int
    body: str = ""
    headers: dict[str, str] = {}
    content_type: str = "application/json"


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer encoded compactly, as vendors' APIs answer (and as cdpd quotes them)."""
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        headers=headers,
        content_type="application/json",
    )


class ContractServer:
    """Subclasses implement `handle(request, body) -> web.Response`, or `routes()`: the
    handler for each path that takes a POST."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.script: deque[Scripted] = deque()
        # Answer bodies sent in pieces of this many bytes, a moment apart, as a long answer
        # crosses the internet (the client must read on to the end); None: in one piece.
        self.answer_piece_bytes: int | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def accepted(self) -> list[Call]:
        return [call for call in self.calls if 200 <= call.status < 300]

    def on(self, path: str) -> list[Call]:
        return [call for call in self.calls if call.path == path]

    async def wait_for(self, predicate: Callable[[Self], bool], timeout_s: float = 30) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_for_calls(self, count: int, timeout_s: float = 30) -> None:
        await self.wait_for(lambda server: len(server.calls) >= count, timeout_s)

    def routes(self) -> dict[str, Handler]:
        raise NotImplementedError

    async def handle(self, request: web.Request, body: bytes) -> web.Response:
        handler = self.routes().get(request.path)
        if handler is None:
            return web.Response(status=404)
        if request.method != "POST":
            return web.Response(status=405)
        return await handler(request, body)

    async def _serve(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.script:
            forced = self.script.popleft()
            response = web.Response(
                status=forced.status,
                text=forced.body,
                headers=forced.headers,
                content_type=forced.content_type,
            )
        else:
            response = await self.handle(request, body)
        assert isinstance(response.body, bytes | None)
        call = Call(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            status=response.status,
            answer=response.body or b"",
        )
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()
        if self.answer_piece_bytes and response.body:
            return await self._in_pieces(request, response, self.answer_piece_bytes)
        return response

    async def _in_pieces(
        self, request: web.Request, response: web.Response, piece_bytes: int
    ) -> web.StreamResponse:
        assert isinstance(response.body, bytes)
        streamed = web.StreamResponse(status=response.status, headers=response.headers)
        await streamed.prepare(request)
        for start in range(0, len(response.body), piece_bytes):
            await streamed.write(response.body[start : start + piece_bytes])
            await asyncio.sleep(0.005)
        await streamed.write_eof()
        return streamed
