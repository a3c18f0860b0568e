"""The aiohttp application: routes, each wrapped so that every request gets an id, errors become
JSON bodies and one log line is written per request.

The wrapping is a plain function around each handler rather than an aiohttp middleware: it does
the same work with one coroutine frame less on every request.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aiosqlite
import structlog
from aiohttp import web

from cdpd import logs
from cdpd.admin import Admin
from cdpd.config import Config
from cdpd.delivery.service import Delivery
from cdpd.governance.stage import Governance
from cdpd.identity.api import ProfileApi
from cdpd.identity.stage import IdentityStage
from cdpd.ingest import cors
from cdpd.ingest.errors import ApiError
from cdpd.ingest.routes import LOG_FIELDS, Ingest
from cdpd.metrics import Metrics
from cdpd.outbox.writer import OutboxUnavailable, OutboxWriter

log = structlog.get_logger()

INGEST = web.AppKey("ingest", Ingest)
WRITER = web.AppKey("writer", OutboxWriter)
MAX_CLIENT_REQUEST_ID_CHARS = 200
START_GRACE_S = 0.2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Drain:
    """Counts the requests being handled, so that shutdown can let them finish before any
    connection is closed (aiohttp drops the bytes a closing connection receives, which would
    leave a request whose body is still arriving unanswered)."""

    def __init__(self) -> None:
        self.active = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def finish(self, timeout_s: float, open_connections: int) -> None:
        """Wait, at most `timeout_s`, for the requests being handled; from now on each answer
        closes its connection."""
        self.closing = True
        if open_connections:
            # A request that had reached an open connection but not been read yet gets a
            # moment to start, so that it is waited for too rather than cut off.
            await asyncio.sleep(min(START_GRACE_S, timeout_s))
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain_timeout", requests_unfinished=self.active, timeout_s=timeout_s)


DRAIN = web.AppKey("drain", Drain)


class Stages(NamedTuple):
    """What the HTTP side reaches: the outbox writer and reader, delivery, metrics."""

    writer: OutboxWriter
    reader: aiosqlite.Connection
    delivery: Delivery
    metrics: Metrics
    governance: Governance | None = None
    identity: IdentityStage | None = None


def build(config: Config, stages: Stages, drain: Drain) -> web.Application:
    ingest = Ingest(config, stages.writer, stages.governance)
    admin = Admin(
        config, stages.writer, stages.reader, stages.delivery, stages.metrics, stages.identity
    )
    stages.metrics.attach(ingest, stages.delivery, stages.identity)
    app = web.Application(client_max_size=config.server.max_request_bytes)
    app[INGEST] = ingest
    app[WRITER] = stages.writer
    app[DRAIN] = drain
    access = logs.access_log(config.logging.level) if config.logging.access_log else None
    wrap = _RequestWrapper(drain, access, errors_only=config.logging.access_log == "errors")
    routes = [*ingest.routes(), *admin.routes(), web.get("/health", health)]
    if stages.identity is not None and config.identity is not None:
        routes += ProfileApi(config.identity, stages.identity).routes()
    app.add_routes(web.RouteDef(r.method, r.path, wrap(r.handler), r.kwargs) for r in routes)
    app.router.add_route("*", "/{tail:.*}", wrap(_Unrouted(routes)))
    return app


async def health(request: web.Request) -> web.Response:
    if request.app[DRAIN].closing:
        return web.json_response({"status": "shutting_down"}, status=503)
    try:
        request.app[WRITER].check_accepting()
    except OutboxUnavailable as exc:
        return web.json_response({"status": exc.code, "message": exc.message}, status=503)
    return web.json_response({"status": "ok"})


class _Unrouted:
    """The last route: 404 for unknown paths, 405 (with Allow) for a known path's other methods."""

    def __init__(self, routes: list[web.RouteDef]) -> None:
        self._methods: dict[str, set[str]] = {}
        for route in routes:
            if "{" not in route.path:
                self._methods.setdefault(route.path, set()).add(route.method)

    async def __call__(self, request: web.Request) -> web.Response:
        allowed = self._methods.get(request.path)
        if allowed is None:
            raise ApiError(404, "not_found", f"there is nothing at {request.path}")
        if request.path.startswith("/v1/"):
            allowed = allowed | {"OPTIONS"}  # the CORS preflight route answers every /v1 path
        raise ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}",
            {"Allow": ", ".join(sorted(allowed))},
        )


class _RequestWrapper:
    def __init__(self, drain: Drain, access: logs.AccessLog | None, *, errors_only: bool) -> None:
        self._drain = drain
        self._access = access
        # Answers below this status are not logged: 300 logs only errors, 0 logs every one.
        self._min_logged_status = 300 if errors_only else 0
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)

    def __call__(self, handler: Handler) -> Handler:
        access = self._access
        prefix = self._prefix
        counter = self._counter
        drain = self._drain
        min_logged_status = self._min_logged_status

        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            request_id = _client_request_id(request) or f"{prefix}-{next(counter):x}"
            fields: dict[str, Any] = {"request_id": request_id}
            request[LOG_FIELDS] = fields
            drain.enter()
            try:
                response = await handler(request)
            except ApiError as exc:
                response = _error_response(request, exc.status, exc.code, exc.message, exc.headers)
            except OutboxUnavailable as exc:
                headers = {"Retry-After": str(exc.retry_after_s)}
                response = _error_response(request, 503, exc.code, exc.message, headers)
            except Exception:
                log.exception("request_failed", **fields, method=request.method, path=request.path)
                response = _error_response(
                    request, 500, "internal_error", "cdpd failed on this request; see its log", {}
                )
            finally:
                drain.leave()
            if drain.closing:
                response.force_close()  # one last answer per kept-alive connection
            response.headers["X-Request-Id"] = request_id
            if access is not None and response.status >= min_logged_status:
                fields["method"] = request.method
                fields["path"] = request.path
                fields["status"] = response.status
                fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
                access.request(fields)
            return response

        return wrapped


def _client_request_id(request: web.Request) -> str | None:
    value = request.headers.get("X-Request-Id")
    if value and len(value) <= MAX_CLIENT_REQUEST_ID_CHARS and value.isprintable():
        return value
    return None


def _error_response(
    request: web.Request, status: int, code: str, message: str, headers: dict[str, str]
) -> web.Response:
    fields = request.get(LOG_FIELDS)
    if fields is not None:
        fields["error"] = code
    allow = cors.response_headers(request.headers.get("Origin"))
    return web.json_response(
        {"code": code, "message": message}, status=status, headers={**headers, **allow}
    )
