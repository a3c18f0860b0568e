"""The Tracking API's routes: every path Segment's official libraries post to.

A request is read with a size limit, authenticated by write key, split into messages, each
message checked and normalised, and everything handed to the outbox writer in one append. The
200 goes out only after the writer has committed.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from cdpd.config import Config, Source
from cdpd.console.debugger import Tap
from cdpd.governance.stage import Governance
from cdpd.ingest import cors
from cdpd.ingest.appender import Appender
from cdpd.ingest.auth import WriteKeys
from cdpd.ingest.body import read_limited
from cdpd.ingest.errors import ApiError
from cdpd.ingest.normalize import Rejection, RequestFacts, normalize
from cdpd.ingest.rejects import reject_rows
from cdpd.ingest.settings import settings_document
from cdpd.model.rows import OutboxRow
from cdpd.model.spec import NULL, BatchEnvelope, RawObject, SingleEnvelope
from cdpd.model.timestamps import format_ms, now_ms, to_epoch_ms

SUCCESS_BODY = b'{"success": true}'
LOG_FIELDS = web.RequestKey("cdpd_log_fields", dict[str, Any])

# Long paths as documented; one-letter paths are what analytics.js and the mobile SDKs post to.
SINGLE_PATHS = {
    "identify": "identify",
    "track": "track",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
}
SHORT_PATHS = {
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}

_single_decoder = msgspec.json.Decoder(SingleEnvelope)
_message_decoder = msgspec.json.Decoder(RawObject)
_batch_decoder = msgspec.json.Decoder(BatchEnvelope)
_text_decoder = msgspec.json.Decoder(str)
_time_decoder = msgspec.json.Decoder(datetime)
_object_decoder = msgspec.json.Decoder(RawObject)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Ingest:
    """Request handlers for the Tracking API, bound to one config and one appender (the outbox
    writer, or the JetStream appender)."""

    def __init__(
        self,
        config: Config,
        writer: Appender,
        governance: Governance | None = None,
        tap: Tap | None = None,
    ) -> None:
        self._server = config.server
        self._writer = writer
        self.tap = tap or Tap()  # the console's live debugger watches through it
        self._keys = WriteKeys(config.sources)
        self.governance = governance or Governance(config)
        self.accepted = 0
        self.duplicates = 0
        self.rejected: dict[str, int] = {}

    def reconfigure(self, config: Config) -> None:
        """Sources and write keys of a reloaded config; the next request sees them."""
        self._keys = WriteKeys(config.sources)

    def routes(self) -> list[web.RouteDef]:
        routes = []
        for path, kind in SINGLE_PATHS.items():
            routes.append(web.post(f"/v1/{path}", self._single_handler(kind, browser=False)))
        for path, kind in SHORT_PATHS.items():
            routes.append(web.post(f"/v1/{path}", self._single_handler(kind, browser=True)))
        for path in ("batch", "import"):
            routes.append(web.post(f"/v1/{path}", self._batch_handler(browser=False)))
        routes += [
            web.post("/v1/b", self._batch_handler(browser=True)),
            web.post("/v1/m", self.telemetry),
            web.get("/v1/projects/{write_key}/settings", self.settings, allow_head=False),
            web.route("OPTIONS", "/v1/{tail:.*}", self.preflight),
        ]
        return routes

    def known_write_key(self, write_key: str) -> bool:
        return self._keys.enabled_source(write_key) is not None

    def _single_handler(self, kind: str, *, browser: bool) -> Handler:
        return functools.partial(self.single, kind=kind, browser=browser)

    def _batch_handler(self, *, browser: bool) -> Handler:
        return functools.partial(self.batch, browser=browser)

    # -- handlers --------------------------------------------------------------------------------

    async def single(self, request: web.Request, *, kind: str, browser: bool) -> web.Response:
        self._writer.check_accepting()
        body = await read_limited(
            request, self._server.max_request_bytes, self._server.body_timeout_s
        )
        received_ms = now_ms()
        message: RawObject = _decode(_message_decoder, body, request)  # decoded once, here
        body_key = _lenient(message.get("writeKey", NULL), _text_decoder, "writeKey", [])
        source = self._keys.source_for(request.headers.get("Authorization"), body_key)
        facts = self._facts(request, body, source, received_ms, browser=browser)
        result = normalize(
            body, facts, path_type=kind, max_bytes=self._server.max_event_bytes, top=message
        )
        return await self._store(request, facts, [result])

    async def batch(self, request: web.Request, *, browser: bool) -> web.Response:
        self._writer.check_accepting()
        body = await read_limited(
            request, self._batch_limit_bytes(browser), self._server.body_timeout_s
        )
        received_ms = now_ms()
        envelope = _decode(_batch_decoder, body, request)
        ignored: list[str] = []  # envelope fields of the wrong type: each message is kept
        body_key = _lenient(envelope.writeKey, _text_decoder, "writeKey", ignored)
        source = self._keys.source_for(
            request.headers.get("Authorization"),
            body_key,
            functools.partial(_item_write_key, envelope.batch),
        )
        facts = self._facts(
            request,
            body,
            source,
            received_ms,
            browser=browser,
            sent_at=_lenient(envelope.sentAt, _time_decoder, "sentAt", ignored),
            context=_lenient(envelope.context, _object_decoder, "context", ignored),
            integrations=_lenient(envelope.integrations, _object_decoder, "integrations", ignored),
        )
        if ignored:
            request[LOG_FIELDS]["envelope_ignored"] = ignored
        limit = self._server.max_batch_events
        max_bytes = self._server.max_event_bytes
        results: list[OutboxRow | Rejection] = [
            normalize(raw, facts, path_type=None, max_bytes=max_bytes)
            for raw in envelope.batch[:limit]
        ]
        results += [_over_batch_limit(raw, limit) for raw in envelope.batch[limit:]]
        return await self._store(request, facts, results)

    def _batch_limit_bytes(self, browser: bool) -> int:
        """The browser's batch path keeps the request limit; the server-side batch paths take
        what RudderStack's gateway takes, so its SDKs' largest batches are not lost."""
        server = self._server
        if browser:
            return server.max_request_bytes
        return max(server.max_request_bytes, server.max_batch_request_bytes)

    async def telemetry(self, request: web.Request) -> web.Response:
        """analytics.js metrics (`/v1/m`): read and dropped, as they describe the library itself."""
        await read_limited(request, self._server.max_request_bytes, self._server.body_timeout_s)
        return self._success(request)

    async def settings(self, request: web.Request) -> web.Response:
        write_key = request.match_info["write_key"]
        source = self._keys.enabled_source(write_key)
        if source is None:
            raise ApiError(404, "unknown_write_key", "no enabled source has this write key")
        request[LOG_FIELDS]["source"] = source.name
        allow = cors.response_headers(request.headers.get("Origin"))
        return web.json_response(
            settings_document(
                write_key, self._public_url(request), self.governance.track_plan(source.name)
            ),
            headers={
                **self._caching(),
                **(allow or {"Access-Control-Allow-Origin": "*"}),
            },
        )

    def _caching(self) -> dict[str, str]:
        """Without `public_url` the document names the Host the client sent, so no shared cache
        may keep it (a forged Host would be served to everyone); with it, any cache may."""
        if self._server.public_url:
            return {"Cache-Control": "public, max-age=60"}
        return {"Cache-Control": "private, max-age=60", "Vary": "Host, Origin"}

    def _public_url(self, request: web.Request) -> str:
        """The configured public URL, else the scheme and host the client used to get here."""
        if self._server.public_url:
            return self._server.public_url
        return f"{request.scheme}://{request.host}"

    async def preflight(self, request: web.Request) -> web.Response:
        headers = cors.preflight_headers(request.headers, self._server.cors_max_age_s)
        return web.Response(status=204, headers=headers)

    # -- helpers ---------------------------------------------------------------------------------

    def _facts(
        self,
        request: web.Request,
        body: bytes,
        source: Source,
        received_ms: int,
        *,
        browser: bool,
        sent_at: datetime | None = None,
        context: RawObject | None = None,
        integrations: RawObject | None = None,
    ) -> RequestFacts:
        sent_at_ms = to_epoch_ms(sent_at) if sent_at is not None else None
        sent_at_text = _format_or_none(sent_at_ms)
        if sent_at_text is None:
            sent_at_ms = None
        return RequestFacts(
            source=source.name,
            request_id=request[LOG_FIELDS]["request_id"],
            received_at_ms=received_ms,
            received_at=format_ms(received_ms),
            sent_at_ms=sent_at_ms,
            sent_at=sent_at_text,
            context=context,
            integrations=integrations,
            # The address is only needed where it may be filled in (context.direct is rare).
            client_ip=self._client_ip(request) if browser or b'"direct"' in body else None,
            fill_ip=browser,
        )

    def _client_ip(self, request: web.Request) -> str | None:
        if self._server.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For")
            if forwarded:
                return forwarded.split(",")[0].strip() or None
        return request.remote

    async def _store(
        self, request: web.Request, facts: RequestFacts, results: Sequence[OutboxRow | Rejection]
    ) -> web.Response:
        governance = self.governance
        governed = governance.apply(facts.source, [r for r in results if type(r) is OutboxRow])
        rows = governed.rows
        rejections = [r for r in (*results, *governed.rejections) if type(r) is Rejection]
        admitted = governance.suppressions.admit_rejections(facts.source, rejections)
        rejects = reject_rows(admitted, facts, self._server.max_rejects_per_request)
        stored = duplicates = 0
        if rows or rejects or governed.extra:
            outcome = await self._writer.append(rows, rejects, facts.received_at_ms, governed.extra)
            stored, duplicates = outcome.stored, outcome.duplicates
            if self.tap.watched:
                self.tap.offer(facts.source, rows)
        self._count(stored, duplicates, admitted)
        fields = request[LOG_FIELDS]
        fields["source"] = facts.source
        fields["accepted"] = stored
        fields["duplicates"] = duplicates
        fields["rejected"] = len(rejections)
        if rejections:
            fields["reject_reasons"] = sorted({r.code for r in rejections})
        return self._success(request)

    def _count(self, stored: int, duplicates: int, rejections: Sequence[Rejection]) -> None:
        self.accepted += stored
        self.duplicates += duplicates
        for rejection in rejections:
            self.rejected[rejection.code] = self.rejected.get(rejection.code, 0) + 1

    @staticmethod
    def _success(request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        return web.Response(
            body=SUCCESS_BODY,
            content_type="application/json",
            headers=cors.response_headers(origin) if origin else None,
        )


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes, request: web.Request) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_request", f"the request body is not usable: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_json", f"the request body is not valid UTF-8: {exc.reason}"
        ) from None
    except msgspec.DecodeError as exc:
        encoding = request.headers.get("Content-Encoding")
        decoded = f" once {encoding}-decoded" if encoding else ""
        raise ApiError(
            400, "invalid_json", f"the request body is not valid JSON{decoded}: {exc}"
        ) from None


def _format_or_none(epoch_ms: int | None) -> str | None:
    """A time in cdpd's format, or None for none or one outside the years 1-9999."""
    if epoch_ms is None:
        return None
    try:
        return format_ms(epoch_ms)
    except ValueError:
        return None


def _lenient(
    raw: msgspec.Raw, decoder: msgspec.json.Decoder[T], name: str, ignored: list[str]
) -> T | None:
    """An optional envelope field, or None when absent or not of the type it must have."""
    if raw == NULL:
        return None
    try:
        return decoder.decode(raw)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        ignored.append(name)
        return None


def _item_write_key(batch: list[msgspec.Raw]) -> str | None:
    """analytics.js (up to 1.81) puts the write key only inside each event: the first one."""
    for raw in batch:
        try:
            key = _lenient(_single_decoder.decode(raw).writeKey, _text_decoder, "writeKey", [])
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            continue
        if key:
            return key
    return None


def _over_batch_limit(raw: msgspec.Raw, limit: int) -> Rejection:
    return Rejection(
        code="too_many_events",
        reason=f"a batch may hold at most {limit} messages; this one is past that",
        message_id=None,
        payload=bytes(raw).decode("utf-8", errors="replace"),
    )
