"""The aiohttp application: routes, and the middleware that gives every request an id, turns
errors into JSON bodies and writes one log line per request."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from cdpd.config import Config
from cdpd.ingest import cors
from cdpd.ingest.errors import ApiError
from cdpd.ingest.routes import LOG_FIELDS, Ingest
from cdpd.outbox.writer import OutboxUnavailable, OutboxWriter

log = structlog.get_logger()

INGEST = web.AppKey("ingest", Ingest)
WRITER = web.AppKey("writer", OutboxWriter)
MAX_CLIENT_REQUEST_ID_CHARS = 200

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build(config: Config, writer: OutboxWriter) -> web.Application:
    ingest = Ingest(config, writer)
    app = web.Application(
        middlewares=[_request_middleware(access_log=config.logging.access_log)],
        client_max_size=config.server.max_request_bytes,
    )
    app[INGEST] = ingest
    app[WRITER] = writer
    app.add_routes(ingest.routes())
    app.router.add_get("/health", health, allow_head=True)
    return app


async def health(request: web.Request) -> web.Response:
    try:
        request.app[WRITER].check_accepting()
    except OutboxUnavailable as exc:
        return web.json_response({"status": exc.code, "message": exc.message}, status=503)
    return web.json_response({"status": "ok"})


Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def _request_middleware(*, access_log: bool) -> Middleware:
    prefix = os.urandom(4).hex()
    counter = itertools.count(1)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _client_request_id(request) or f"{prefix}-{next(counter):x}"
        fields = {"request_id": request_id}
        request[LOG_FIELDS] = fields
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _error_response(request, exc.status, exc.code, exc.message, exc.headers)
        except OutboxUnavailable as exc:
            headers = {"Retry-After": str(exc.retry_after_s)}
            response = _error_response(request, 503, exc.code, exc.message, headers)
        except web.HTTPException as exc:
            code = exc.reason.lower().replace(" ", "_")
            kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            response = _error_response(request, exc.status, code, exc.text or exc.reason, kept)
        except Exception:
            log.exception("request_failed", **fields, method=request.method, path=request.path)
            response = _error_response(
                request, 500, "internal_error", "cdpd failed on this request; it has been logged", {}
            )
        response.headers["X-Request-Id"] = request_id
        if access_log:
            log.info(
                "request",
                **fields,
                method=request.method,
                path=request.path,
                status=response.status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
        return response

    return middleware


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
