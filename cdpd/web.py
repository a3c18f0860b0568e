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
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import aiosqlite
import structlog
from aiohttp import web

from cdpd import logs
from cdpd.admin import Admin
from cdpd.config import Config
from cdpd.config import load as load_config
from cdpd.connections import ConnectionGuard
from cdpd.console import state as console_state
from cdpd.console.changes import ConfigChanges
from cdpd.console.debugger import Tap
from cdpd.console.local import LocalData, LocalProfiles, SqliteState
from cdpd.console.privacy_data import OutboxPrivacy
from cdpd.console.web import Console
from cdpd.console.web import Parts as ConsoleParts
from cdpd.delivery.service import Delivery
from cdpd.governance.stage import Governance
from cdpd.identity.api import ProfileApi
from cdpd.identity.stage import IdentityStage
from cdpd.ingest import bundle, cors
from cdpd.ingest.errors import ApiError
from cdpd.ingest.routes import LOG_FIELDS, Ingest
from cdpd.metrics import Metrics
from cdpd.outbox.writer import OutboxUnavailable, OutboxWriter
from cdpd.privacy.endpoints import OutboxPortal, PrivacyEndpoints
from cdpd.privacy.regulations_api import OutboxRegulations, RegulationsApi
from cdpd.privacy.regulations_service import RegulationService
from cdpd.warehouse.scheduler import Scheduler

if TYPE_CHECKING:
    from cdpd.reload import Consumers

log = structlog.get_logger()

INGEST = web.AppKey("ingest", Ingest)
WRITER = web.AppKey("writer", OutboxWriter)
ADMIN = web.AppKey("admin", Admin)
CONNECTIONS = web.AppKey("connections", ConnectionGuard)
# The warehouses in force, for /health (a reload replaces them).
WAREHOUSES = web.AppKey[Callable[[], Scheduler | None]]("warehouses")
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
        grace_s = min(START_GRACE_S, timeout_s) if open_connections else 0.0
        if grace_s:
            # A request that had reached an open connection but not been read yet gets a
            # moment to start, so that it is waited for too rather than cut off.
            await asyncio.sleep(grace_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s - grace_s)
        except TimeoutError:
            log.warning("drain_timeout", requests_unfinished=self.active, timeout_s=timeout_s)


DRAIN = web.AppKey("drain", Drain)
ADMIN_APP = web.AppKey("admin_app", web.Application)


class Stages(NamedTuple):
    """What the HTTP side reaches: the outbox writer and reader, delivery, metrics, and for
    the console its state file and the warehouse scheduler."""

    writer: OutboxWriter
    reader: aiosqlite.Connection
    delivery: Delivery
    metrics: Metrics
    governance: Governance | None = None
    console_state: aiosqlite.Connection | None = None
    pipeline: Consumers | None = None  # the delivery and warehouses in force (they reload)
    regulations: RegulationService | None = None
    identity: IdentityStage | None = None
    config_path: Path | None = None  # the main config file, which the console's changes load


def build(config: Config, stages: Stages, drain: Drain) -> web.Application:
    """The public application; with `[admin] listen` the admin API, the regulation API, the
    console and /metrics are left out of it and served by a second application
    (`app[ADMIN_APP]`) on that address."""
    tap = Tap()
    ingest = Ingest(config, stages.writer, stages.governance, tap)
    tokens = None
    if stages.console_state is not None:
        tokens = functools.partial(console_state.token_scope, stages.console_state)
    admin = Admin(
        config,
        stages.writer,
        stages.reader,
        stages.delivery,
        stages.metrics,
        tokens,
        identity=stages.identity,
    )
    stages.metrics.attach(ingest, stages.delivery, identity=stages.identity)
    access = logs.access_log(config.logging.level) if config.logging.access_log else None
    wrap = _RequestWrapper(
        drain,
        access,
        errors_only=config.logging.access_log == "errors",
        answers=stages.metrics.answers,
    )
    health_route = web.get("/health", health)
    public = [*ingest.routes(), *bundle.routes(ingest.known_write_key), health_route]
    if stages.identity is not None and config.identity is not None:  # Basic auth of its own
        public += ProfileApi(config.identity, stages.identity).routes()
    operator = _operator_routes(config, stages, admin, tap, drain)
    if config.admin.listen is None:
        public += operator
    app = _application(config, public, wrap)
    app[INGEST] = ingest
    app[WRITER] = stages.writer
    app[DRAIN] = drain
    app[ADMIN] = admin
    pipeline = stages.pipeline
    app[WAREHOUSES] = lambda: pipeline.warehouses if pipeline is not None else None
    if config.admin.listen is not None:
        admin_app = _application(config, [*operator, health_route], wrap)
        admin_app[WRITER] = stages.writer
        admin_app[DRAIN] = drain
        admin_app[WAREHOUSES] = app[WAREHOUSES]
        app[ADMIN_APP] = admin_app
    return app


def _operator_routes(
    config: Config, stages: Stages, admin: Admin, tap: Tap, drain: Drain
) -> list[web.RouteDef]:
    """The admin API, the regulation API and the console: what operators use."""
    routes = admin.routes()
    portal = (
        OutboxPortal(stages.writer, stages.reader, stages.governance.privacy)
        if stages.governance is not None
        else None
    )
    routes += PrivacyEndpoints(portal, admin.authorize).routes() if portal is not None else []
    if stages.regulations is not None:
        book = OutboxRegulations(stages.writer, stages.reader, stages.regulations)
        regulations = RegulationsApi(config, book, admin.authorize)
        routes += regulations.routes()
    if (
        config.console.enabled
        and stages.console_state is not None
        and stages.pipeline is not None
        and stages.governance is not None
        and portal is not None
    ):
        pipeline = stages.pipeline
        parts = ConsoleParts(
            config_of=lambda: pipeline.config,
            state=SqliteState(stages.console_state),
            data=LocalData(
                stages.reader,
                tap,
                lambda: pipeline.delivery,
                lambda: pipeline.warehouses,
                OutboxPrivacy(stages.reader, portal),
                LocalProfiles(stages.identity, lambda: pipeline.config),
            ),
            closing=lambda: drain.closing,
            changes=ConfigChanges(stages.config_path, load_config, pipeline.reload),
        )
        routes += Console(parts).routes()
    return routes


def _application(
    config: Config, routes: list[web.RouteDef], wrap: _RequestWrapper
) -> web.Application:
    app = web.Application(
        client_max_size=max(config.server.max_request_bytes, config.server.max_batch_request_bytes)
    )
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
    in_force = request.app.get(WAREHOUSES)
    warehouses = in_force() if in_force is not None else None
    if warehouses is not None and warehouses.gaps:
        # Ingest works (200), but something stored is not reaching where it should.
        problems = [
            {"code": gap.code, "warehouse": name, "message": gap.message}
            for name, gap in sorted(warehouses.gaps.items())
        ]
        return web.json_response({"status": "degraded", "problems": problems})
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
    def __init__(
        self,
        drain: Drain,
        access: logs.AccessLog | None,
        *,
        errors_only: bool,
        answers: dict[int, int] | None = None,
    ) -> None:
        self._drain = drain
        self._answers = answers if answers is not None else {}
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
        answers = self._answers
        request_started = ConnectionGuard.request_started
        request_finished = ConnectionGuard.request_finished

        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            request_id = _client_request_id(request) or f"{prefix}-{next(counter):x}"
            fields: dict[str, Any] = {"request_id": request_id}
            request[LOG_FIELDS] = fields
            drain.enter()
            request_started(request)
            try:
                response = await handler(request)
            except ApiError as exc:
                response = _error_response(request, exc.status, exc.code, exc.message, exc.headers)
                if exc.close:
                    response.force_close()
            except OutboxUnavailable as exc:
                headers = {"Retry-After": str(exc.retry_after_s)}
                response = _error_response(request, 503, exc.code, exc.message, headers)
            except Exception:
                log.exception(
                    "request_failed", **fields, method=request.method, path=_logged_path(request)
                )
                response = _error_response(
                    request, 500, "internal_error", "cdpd failed on this request; see its log", {}
                )
            finally:
                drain.leave()
                request_finished(request)
            if drain.closing:
                response.force_close()  # one last answer per kept-alive connection
            response.headers["X-Request-Id"] = request_id
            status = response.status
            answers[status] = answers.get(status, 0) + 1
            if access is not None and response.status >= min_logged_status:
                fields["method"] = request.method
                fields["path"] = _logged_path(request)
                fields["status"] = response.status
                fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
                access.request(fields)
            return response

        return wrapped


def _logged_path(request: web.Request) -> str:
    """The path, with a write key in it (the settings document's path) cut to its start."""
    write_key = request.match_info.get("write_key")
    if not write_key:
        return request.path
    return request.path.replace(write_key, masked(write_key))


def masked(secret: str) -> str:
    """Enough of a write key to tell keys apart in a log, not enough to use it."""
    return secret[:4] + "..." if len(secret) >= 12 else "..."


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


# What the JetStream backend's node (cdpd/cluster/node.py) builds its applications with.
RequestWrapper = _RequestWrapper
application = _application
