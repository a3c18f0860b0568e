"""Admin HTTP endpoints (bearer token) and /metrics: where deliveries stand, replay, and the
restarts of background services."""

from __future__ import annotations

import hmac
from typing import Literal

import aiosqlite
import msgspec
from aiohttp import web

from cdpd.config import Config, Destination
from cdpd.delivery import replay, report
from cdpd.delivery.lane import LaneStats
from cdpd.delivery.service import Delivery
from cdpd.governance import store as governance_store
from cdpd.identity.stage import IdentityError, IdentityStage
from cdpd.ingest.errors import ApiError
from cdpd.metrics import CONTENT_TYPE, Metrics
from cdpd.model.timestamps import format_ms, now_ms, parse_ms
from cdpd.outbox.writer import OutboxWriter


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    destination: str
    dead: bool = False
    since: str | None = None
    until: str | None = None
    source: str | None = None


class RetryRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    destination: str


class UnmergeRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    identifier: str  # TYPE:VALUE
    collection: Literal["users", "accounts"] = "users"


class Admin:
    def __init__(
        self,
        config: Config,
        writer: OutboxWriter,
        reader: aiosqlite.Connection,
        delivery: Delivery,
        metrics: Metrics,
        identity: IdentityStage | None = None,
    ) -> None:
        self._token = config.admin.resolved_token()
        self._destinations = {d.name: d for d in config.destinations}
        self._names = list(self._destinations)
        self._writer = writer
        self._reader = reader
        self._delivery = delivery
        self._metrics = metrics
        self._identity = identity

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/deliveries", self.deliveries),
            web.get("/admin/deliveries/dead", self.dead),
            web.get("/admin/services", self.services),
            web.post("/admin/replay", self.replay),
            web.post("/admin/deliveries/retry", self.retry),
            web.get("/admin/deliveries/messages/{message_id}", self.show),
            web.get("/admin/violations", self.violations),
            web.post("/admin/profiles/unmerge", self.unmerge),
            web.get("/metrics", self.metrics),
        ]

    async def deliveries(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return _json({"destinations": await self._reports()})

    async def dead(self, request: web.Request) -> web.Response:
        self._authorize(request)
        destination = request.query.get("destination")
        limit = _int(request.query.get("limit", "100"), "limit")
        return _json({"dead": await report.dead(self._reader, destination, limit)})

    async def services(self, request: web.Request) -> web.Response:
        """Each supervised background service and how often it has been restarted."""
        self._authorize(request)
        counts = sorted(self._metrics.restarts.counts.items())
        return _json({"services": [{"name": name, "restarts": n} for name, n in counts]})

    async def replay(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            asked = msgspec.json.decode(await request.read(), type=ReplayRequest)
        except msgspec.MsgspecError as exc:
            raise ApiError(400, "invalid_request", f"not a replay request: {exc}") from None
        destination = self._destination(asked.destination)
        if not destination.enabled:
            raise ApiError(409, "destination_disabled", f"{destination.name} is disabled")
        if asked.dead:
            count = await replay.replay_dead(self._delivery.store, destination)
        elif asked.since:
            since, until = _time(asked.since, "since"), _time(asked.until, "until", default=True)
            count = await replay.replay_range(
                self._delivery.store, destination, since, until, asked.source
            )
        else:
            raise ApiError(400, "invalid_request", "say what to replay: dead = true, or since")
        if destination.name in self._delivery.lanes:
            self._delivery.lanes[destination.name].wake()
        return _json({"destination": destination.name, "queued": count})

    async def retry(self, request: web.Request) -> web.Response:
        """Every waiting retry of a destination is due now (it is back, say)."""
        self._authorize(request)
        try:
            asked = msgspec.json.decode(await request.read(), type=RetryRequest)
        except msgspec.MsgspecError as exc:
            raise ApiError(400, "invalid_request", f"not a retry request: {exc}") from None
        destination = self._destination(asked.destination)
        count = await self._delivery.store.retry_now(destination.name, format_ms(now_ms()))
        lane = self._delivery.lanes.get(destination.name)
        if lane is not None:
            lane.circuit.succeeded()  # try it at once rather than at the next probe
            lane.wake()
        return _json({"destination": destination.name, "due_now": count})

    async def unmerge(self, request: web.Request) -> web.Response:
        """Split an identifier off its profile (`cdpd profiles unmerge` posts here)."""
        self._authorize(request)
        if self._identity is None:
            raise ApiError(404, "identity_off", "identity resolution is not configured")
        try:
            asked = msgspec.json.decode(await request.read(), type=UnmergeRequest)
        except msgspec.MsgspecError as exc:
            raise ApiError(400, "invalid_request", f"not an unmerge request: {exc}") from None
        kind, sep, value = asked.identifier.partition(":")
        if not sep or not kind or not value:
            raise ApiError(400, "invalid_request", "identifier: expected TYPE:VALUE")
        try:
            profiles = await self._identity.unmerge((kind, value), asked.collection)
        except IdentityError as exc:
            raise ApiError(409, "cannot_unmerge", str(exc)) from None
        return _json({"identifier": asked.identifier, "profiles": profiles})

    async def show(self, request: web.Request) -> web.Response:
        """Where one message stands with each destination."""
        self._authorize(request)
        message_id = request.match_info["message_id"]
        rules = list(self._delivery.rules.values())
        found = await self._delivery.store.show(message_id, rules)
        if not found:
            raise ApiError(404, "unknown_message", f"no message {message_id!r} in the outbox")
        return _json({"message_id": message_id, "deliveries": found})

    async def violations(self, request: web.Request) -> web.Response:
        """Violations grouped by source, event and field: counts, first and last seen and a
        sample message id (`cdpd violations` reads the same)."""
        self._authorize(request)
        since = request.query.get("since")
        found = await governance_store.summarize_violations(
            self._reader,
            source=request.query.get("source"),
            event=request.query.get("event"),
            since=_time(since, "since") if since else None,
        )
        return _json({"violations": found})

    async def metrics(self, request: web.Request) -> web.Response:
        body = self._metrics.render(await report.states(self._reader, self._names, delivered=False))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _reports(self) -> list[report.DestinationReport]:
        """Counts from the outbox; the rest from the lanes' live figures since start, so the
        endpoint never reads through the attempts table. Lanes that do not run (disabled or
        removed destinations) have no live figures: `cdpd deliveries` reads their history."""
        reports = await report.states(self._reader, self._names, delivered=True)
        for entry in reports:
            lane = self._delivery.lanes.get(entry.destination)
            if lane is not None:
                _live(entry, lane.stats)
        return reports

    def _authorize(self, request: web.Request) -> None:
        if self._token is None:
            raise ApiError(
                401, "admin_disabled", "admin endpoints are off: set [admin] token or token_env"
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        token = given.strip().encode("utf-8", errors="replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, self._token.encode()):
            raise ApiError(
                401,
                "invalid_admin_token",
                "send the admin token as Authorization: Bearer <token>",
                {"WWW-Authenticate": "Bearer"},
            )

    def _destination(self, name: str) -> Destination:
        try:
            return self._destinations[name]
        except KeyError:
            raise ApiError(
                404, "unknown_destination", f"no destination is named {name!r}"
            ) from None


def _live(entry: report.DestinationReport, stats: LaneStats) -> None:
    entry.sending = stats.in_flight
    entry.latency_p50_ms = stats.percentile_ms(0.50)
    entry.latency_p95_ms = stats.percentile_ms(0.95)
    entry.errors_by_status = dict(stats.errors_by_status)
    entry.unhealthy = stats.unhealthy
    entry.circuit = stats.circuit
    if stats.last_error_at is not None and stats.last_error_message_id is not None:
        entry.last_error = report.LastError(
            stats.last_error_at,
            stats.last_error_status,
            stats.last_error,
            stats.last_error_message_id,
        )


_encoder = msgspec.json.Encoder()


def _json(body: object) -> web.Response:
    return web.Response(body=_encoder.encode(body), content_type="application/json")


def _int(text: str, name: str) -> int:
    if not text.isdigit():
        raise ApiError(400, "invalid_request", f"{name} must be a whole number")
    return int(text)


def _time(text: str | None, name: str, *, default: bool = False) -> str:
    if text is None and default:
        return "9999-12-31T23:59:59.999Z"
    try:
        return format_ms(parse_ms(text or ""))
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name}: expected an ISO-8601 time") from None
