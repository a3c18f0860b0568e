"""Admin HTTP endpoints (bearer token) and /metrics: where deliveries stand, replay, and the
restarts of background services."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Literal

import aiosqlite
import msgspec
from aiohttp import web

from cdpd.config import Config, Destination
from cdpd.console import access
from cdpd.console.access import Scope
from cdpd.delivery import replay, report
from cdpd.delivery.lane import LaneStats
from cdpd.delivery.service import Delivery
from cdpd.governance import store as governance_store
from cdpd.identity.stage import IdentityError, IdentityStage
from cdpd.ingest.errors import ApiError, decoded_request
from cdpd.metrics import CONTENT_TYPE, Metrics
from cdpd.model.timestamps import format_ms, now_ms, parse_ms
from cdpd.outbox import consumers
from cdpd.outbox.writer import OutboxWriter

MAX_LIMIT = 10_000  # rows in one listing
MAX_PARAMETER_CHARS = 1000  # names, ids and times are far shorter


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    destination: str
    dead: bool = False
    since: str | None = None
    until: str | None = None
    source: str | None = None


class RetryRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    destination: str


TokenLookup = Callable[[str], Awaitable[tuple[str, str] | None]]


class UnmergeRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    identifier: str  # TYPE:VALUE
    collection: Literal["users", "accounts"] = "users"


def unmerge_request(body: bytes) -> tuple[UnmergeRequest, str, str]:
    """The request, and its identifier's type and value; 400 `invalid_request` saying why not."""
    try:
        asked = msgspec.json.decode(body, type=UnmergeRequest)
    except msgspec.MsgspecError as exc:
        raise ApiError(400, "invalid_request", f"not an unmerge request: {exc}") from None
    kind, sep, value = asked.identifier.partition(":")
    if not sep or not kind or not value:
        raise ApiError(400, "invalid_request", "identifier: expected TYPE:VALUE")
    return asked, kind, value


class Admin:
    """The admin token sees and does everything; a workspace's API token (`cdpd tokens`) sees
    only that workspace's sources and destinations, and changes them only as a member or
    owner. Anything outside its workspace answers as if it did not exist."""

    def __init__(
        self,
        config: Config,
        writer: OutboxWriter,
        reader: aiosqlite.Connection,
        delivery: Delivery,
        metrics: Metrics,
        tokens: TokenLookup | None = None,
        identity: IdentityStage | None = None,
    ) -> None:
        self._config = config
        self._token = config.admin.resolved_token()
        self._tokens = tokens
        self._destinations = {d.name: d for d in config.destinations}
        self._names = list(self._destinations)
        self._writer = writer
        self._reader = reader
        self._delivery = delivery
        self._metrics = metrics
        self._identity = identity

    def reconfigure(self, config: Config, delivery: Delivery) -> None:
        """The destinations (and token) of a reloaded config, and the delivery built for it."""
        self._token = config.admin.resolved_token()
        self._destinations = {d.name: d for d in config.destinations}
        self._names = list(self._destinations)
        self._delivery = delivery

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
        scope = await self._authorize(request)
        reports = [r for r in await self._reports() if _sees(scope, r.destination)]
        return _json({"destinations": reports})

    async def dead(self, request: web.Request) -> web.Response:
        scope = await self._authorize(request)
        destination = _text(request.query.get("destination"), "destination")
        if destination is not None and not _sees(scope, destination):
            raise _unknown_destination(destination)
        limit = _limit(request.query.get("limit", "100"))
        found = await report.dead(self._reader, destination, limit if scope is None else 10**6)
        return _json({"dead": [d for d in found if _sees(scope, d.destination)][:limit]})

    async def services(self, request: web.Request) -> web.Response:
        """Each supervised background service and how often it has been restarted."""
        await self._authorize(request, ADMIN_ONLY)
        counts = sorted(self._metrics.restarts.counts.items())
        return _json({"services": [{"name": name, "restarts": n} for name, n in counts]})

    async def replay(self, request: web.Request) -> web.Response:
        scope = await self._authorize(request, "member")
        asked = decoded_request(await request.read(), ReplayRequest, "replay")
        destination = self._destination(asked.destination, scope)
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
        scope = await self._authorize(request, "member")
        asked = decoded_request(await request.read(), RetryRequest, "retry")
        destination = self._destination(asked.destination, scope)
        count = await self._delivery.store.retry_now(destination.name, format_ms(now_ms()))
        lane = self._delivery.lanes.get(destination.name)
        if lane is not None:
            lane.circuit.succeeded()  # try it at once rather than at the next probe
            lane.wake()
        return _json({"destination": destination.name, "due_now": count})

    async def unmerge(self, request: web.Request) -> web.Response:
        """Split an identifier off its profile (`cdpd profiles unmerge` posts here)."""
        await self._authorize(request, ADMIN_ONLY)
        if self._identity is None:
            raise ApiError(404, "identity_off", "identity resolution is not configured")
        asked, kind, value = unmerge_request(await request.read())
        try:
            profiles = await self._identity.unmerge((kind, value), asked.collection)
        except IdentityError as exc:
            raise ApiError(409, "cannot_unmerge", str(exc)) from None
        return _json({"identifier": asked.identifier, "profiles": profiles})

    async def show(self, request: web.Request) -> web.Response:
        """Where one message stands with each destination."""
        scope = await self._authorize(request)
        message_id = _text(request.match_info["message_id"], "message_id") or ""
        if scope is not None and not await self._from_sources(message_id, scope.sources):
            raise ApiError(404, "unknown_message", f"no message {message_id!r} in the outbox")
        rules = [r for r in self._delivery.rules.values() if _sees(scope, r.destination)]
        found = [
            status
            for status in await self._delivery.store.show(message_id, rules)
            if _sees(scope, status.destination)
        ]
        if not found:
            raise ApiError(404, "unknown_message", f"no message {message_id!r} in the outbox")
        return _json({"message_id": message_id, "deliveries": found})

    async def _from_sources(self, message_id: str, sources: frozenset[str]) -> bool:
        rows = await self._reader.execute_fetchall(
            "SELECT source FROM messages WHERE message_id = ?", (message_id,)
        )
        return any(source in sources for (source,) in rows)

    async def violations(self, request: web.Request) -> web.Response:
        """Violations grouped by source, event and field: counts, first and last seen and a
        sample message id (`cdpd violations` reads the same)."""
        scope = await self._authorize(request)
        since = request.query.get("since")
        source = _text(request.query.get("source"), "source")
        found = await governance_store.summarize_violations(
            self._reader,
            source=source,
            event=_text(request.query.get("event"), "event"),
            since=_time(since, "since") if since else None,
        )
        if scope is not None:
            found = [v for v in found if v.source in scope.sources]
        return _json({"violations": found})

    async def metrics(self, request: web.Request) -> web.Response:
        states = await report.states(self._reader, self._names, delivered=False)
        body = self._metrics.render(states, await consumers.lags(self._reader))
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

    async def authorize(self, request: web.Request) -> None:
        """Raise a 401 or 403 ApiError unless the request carries the admin bearer token."""
        await self._authorize(request, ADMIN_ONLY)

    async def _authorize(self, request: web.Request, needed: str = "read-only") -> Scope | None:
        """None for the admin token (everything); a workspace token's scope when its role is
        at least `needed`; else 401 or 403."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        token = given.strip()
        if scheme.lower() == "bearer" and token:
            if self._token is not None and hmac.compare_digest(
                token.encode("utf-8", errors="replace"), self._token.encode()
            ):
                return None
            scoped = await self._tokens(token) if self._tokens is not None else None
            if scoped is not None:
                workspace, role = scoped
                if needed == ADMIN_ONLY or access.rank(role) < access.rank(needed):
                    raise ApiError(
                        403,
                        "forbidden",
                        f"this token is {role} of workspace {workspace!r};"
                        f" this needs {needed if needed != ADMIN_ONLY else 'the admin token'}",
                    )
                return Scope.of(self._config, [workspace])
        if self._token is None:
            raise ApiError(
                401,
                "admin_disabled",
                "admin endpoints are off: set [admin] token or token_env, or send a workspace"
                " API token (cdpd tokens create)",
            )
        raise ApiError(
            401,
            "invalid_admin_token",
            "send the admin token or a workspace API token as Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )

    def _destination(self, name: str, scope: Scope | None) -> Destination:
        if name not in self._destinations or not _sees(scope, name):
            raise _unknown_destination(name)
        return self._destinations[name]


ADMIN_ONLY = "admin"


def _sees(scope: Scope | None, destination: str) -> bool:
    return scope is None or destination in scope.destinations


def _unknown_destination(name: str) -> ApiError:
    return ApiError(404, "unknown_destination", f"no destination is named {name!r}")


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


def _limit(text: str) -> int:
    """A listing's `limit`: ASCII digits only (`str.isdigit` takes "²", which `int` refuses)
    and within what one answer may hold."""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
        raise ApiError(
            400, "invalid_request", f"limit must be a whole number from 1 to {MAX_LIMIT}"
        )
    return int(text)


def _text(text: str | None, name: str) -> str | None:
    if text is not None and len(text) > MAX_PARAMETER_CHARS:
        raise ApiError(
            400, "invalid_request", f"{name} is longer than {MAX_PARAMETER_CHARS} characters"
        )
    return text


def _time(text: str | None, name: str, *, default: bool = False) -> str:
    if text is None and default:
        return "9999-12-31T23:59:59.999Z"
    try:
        return format_ms(parse_ms(text or ""))
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name}: expected an ISO-8601 time") from None
