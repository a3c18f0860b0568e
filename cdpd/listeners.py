"""Serving an application on the sockets start-up bound: the public listener behind the
connection guard, and the operator's listener when `[admin] listen` gives one. Both the SQLite
daemon and a JetStream node serve through here."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from aiohttp import web

from cdpd import connections, startup
from cdpd import web as cdpd_web
from cdpd.config import Config, ServerConfig
from cdpd.shutdown import ShutdownBudget


@contextlib.contextmanager
def admin_socket(config: Config) -> Iterator[socket.socket | None]:
    """The operator's socket, bound before anything opens; None without `[admin] listen`."""
    if config.admin.listen is None:
        yield None
        return
    with contextlib.closing(startup.bind(config.server, config.admin.listen)) as sock:
        yield sock


@asynccontextmanager
async def serving(
    server: ServerConfig,
    app: web.Application,
    drain: cdpd_web.Drain,
    budget: ShutdownBudget,
    sock: socket.socket,
    admin: tuple[web.Application, socket.socket] | None = None,
) -> AsyncIterator[tuple[str, str | None]]:
    """Serve `app` (and the operator's app) until the block exits; yields both URLs. On exit:
    no new connections, requests in flight finish within the budget, then idle ones close."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=budget.close_s,  # after the drain below: idle connections only
        **connections.handler_args(
            server.max_headers, server.max_header_bytes, server.keepalive_timeout_s
        ),
    )
    guard = connections.ConnectionGuard(
        max_connections=server.max_connections,
        max_header_bytes=server.max_header_bytes,
        header_timeout_s=server.header_timeout_s,
    )
    app[cdpd_web.CONNECTIONS] = guard
    await runner.setup()
    try:
        assert runner.server is not None
        listener = await asyncio.get_running_loop().create_server(
            guard.factory(runner.server), sock=sock
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                admin_url = None
                if admin is not None:
                    admin_url = await stack.enter_async_context(_serving_admin(*admin))
                yield url_of(listener.sockets[0].getsockname()), admin_url
        finally:
            budget.start()
            listener.close()  # no new connections
            open_connections = len(runner.server.connections) if runner.server else 0
            await drain.finish(budget.requests_s(), open_connections)
    finally:
        await runner.cleanup()  # closes the now idle connections
        guard.close()


@asynccontextmanager
async def _serving_admin(app: web.Application, sock: socket.socket) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield url_of(sock.getsockname())
    finally:
        await runner.cleanup()


def url_of(address: tuple[str, int]) -> str:
    host, port = address[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
