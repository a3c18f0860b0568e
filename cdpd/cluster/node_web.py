"""A node's own endpoints beside the Tracking API: `/health`, `/metrics` and the admin API's
`GET /admin/cluster` (what the streams hold, from any node)."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable, Iterator

import msgspec
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from cdpd.cluster import status
from cdpd.cluster.ingest import JetStreamAppender
from cdpd.cluster.layout import Layout
from cdpd.config import Config
from cdpd.ingest.errors import ApiError
from cdpd.metrics import CONTENT_TYPE, Metrics
from cdpd.outbox.writer import OutboxUnavailable
from cdpd.web import Drain

STATUS_TIMEOUT_S = 5.0


class NodeEndpoints:
    def __init__(
        self,
        config: Config,
        js: JetStreamContext,
        layout: Layout,
        appender: JetStreamAppender,
        metrics: Metrics,
        client: Client,
    ) -> None:
        self._token = config.admin.resolved_token()
        self._js = js
        self._layout = layout
        self._appender = appender
        self._client = client
        self.metrics = metrics
        self.stage_routes: list[web.RouteDef] = []  # what the node's stages serve (delivery's)
        self.public_routes: list[web.RouteDef] = []  # ... beside the Tracking API (profiles')
        # Stages whose metrics are read from the cluster just before each scrape.
        self.before_render: list[Callable[[], Awaitable[None]]] = []
        self._status = status.StatusCollector()
        metrics.registry.register(self._status)

    def routes(self) -> list[web.RouteDef]:
        own = [web.get("/admin/cluster", self.cluster), web.get("/metrics", self.render)]
        return own + self.stage_routes

    async def health(self, drain: Drain, request: web.Request) -> web.Response:
        """503 while shutting down or when the cluster cannot take writes (this node would
        answer every request 503: a load balancer sends them elsewhere)."""
        if drain.closing:
            return web.json_response({"status": "shutting_down"}, status=503)
        try:
            self._appender.check_accepting()
        except OutboxUnavailable as exc:
            problems = [{"code": exc.code, "message": exc.message}]
            return web.json_response({"status": "degraded", "problems": problems}, status=503)
        return web.json_response({"status": "ok"})

    async def cluster(self, request: web.Request) -> web.Response:
        self._authorize(request)
        found = await self._read()
        return web.Response(body=msgspec.json.encode(found), content_type="application/json")

    async def render(self, request: web.Request) -> web.Response:
        self._status.connected = self._client.is_connected
        self._status.status = await self._read()
        for refresh in self.before_render:
            await refresh()
        body = self.metrics.render([])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _read(self) -> status.ClusterStatus:
        with cluster_answers():
            return await status.read(self._js, self._layout)

    def _authorize(self, request: web.Request) -> None:
        require_admin(self._token, request)


@contextlib.contextmanager
def cluster_answers() -> Iterator[None]:
    """A request the cluster did not answer is a 503, whatever nats-py raised (several
    unrelated types for one lost link); an answer already made (ApiError) goes through."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        raise ApiError(
            503, "cluster_unreachable", f"the JetStream cluster did not answer: {exc!r}"
        ) from None


def require_admin(token: str | None, request: web.Request) -> None:
    """Raise a 401 ApiError unless the request carries the admin token (`token`)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token is None:
        raise ApiError(
            401, "admin_disabled", "admin endpoints are off: set [admin] token or token_env"
        )
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", errors="replace"), token.encode()
    ):
        raise ApiError(
            401,
            "invalid_admin_token",
            "send the admin token as Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
