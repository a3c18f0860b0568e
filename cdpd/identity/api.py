"""Segment's Profile API, served by cdpd: a client written for `profiles.segment.com` works by
changing the base URL.

    GET  /v1/spaces/{space}/collections/{users|accounts}/profiles/{type}:{value}/{resource}
         resource: traits | external_ids | events | metadata | links
    POST /v1/spaces/{space}/collections/users/profiles/{type}:{value}/external_ids/delete

Basic auth with an access token as the user name and an empty password; errors are
`{"error": {"code", "message"}}` with Segment's codes; every answer carries `Request-Id`.
Lists page with `limit` and an opaque `next` cursor, as Segment's do.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlencode

import aiosqlite
import msgspec
from aiohttp import web

from cdpd.config import IdentityConfig
from cdpd.identity import reads
from cdpd.identity.graph import Graph
from cdpd.identity.identifiers import Identifier, Rules, extract
from cdpd.identity.stage import IdentityError
from cdpd.ingest.routes import LOG_FIELDS
from cdpd.model.timestamps import format_ms, now_ms, to_epoch_ms

PREFIX = "/v1/spaces/{space}/collections/{collection}/profiles/{identifier}"
TRAIT_CLASSES = ("audience", "computed_trait")
NOT_FOUND = "Profile was not found."
_payload = msgspec.json.Decoder(dict[str, Any])


class ProfileApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


Handler = Callable[[web.Request], Awaitable[web.Response]]
EngageTraits = Callable[[str, str], Awaitable[dict[str, tuple[Any, int]]]]


class ProfileSource(Protocol):
    """What the API reads profiles from: the identity stage, or (on a JetStream node that does
    not hold the profiles lease) a snapshot of its store."""

    rules: Rules

    @property
    def graph(self) -> Graph: ...

    @property
    def reader(self) -> aiosqlite.Connection | None: ...

    @property
    def engage_traits(self) -> EngageTraits | None: ...

    async def delete_identifier(self, pid: str, identifier: Identifier) -> None: ...


class ProfileApi:
    def __init__(self, config: IdentityConfig, identity: ProfileSource) -> None:
        self._config = config
        self._identity = identity
        self._tokens = [token.encode() for token in config.resolved_tokens()]
        self._window_started_s = 0.0
        self._window_requests = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/{resource}", self._answer(self.read)),
            web.post(PREFIX + "/external_ids/delete", self._answer(self.delete_external_id)),
        ]

    def _answer(self, handler: Handler) -> Handler:
        async def answer(request: web.Request) -> web.Response:
            try:
                self._authorize(request)
                self._count_request()
                response = await handler(request)
            except ProfileApiError as exc:
                body = {"error": {"code": exc.code, "message": exc.message}}
                response = web.json_response(body, status=exc.status)
                if exc.status == 401:
                    response.headers["WWW-Authenticate"] = 'Basic realm="Profile API"'
            fields = request.get(LOG_FIELDS)
            if fields is not None:
                response.headers["Request-Id"] = fields["request_id"]
            return response

        return answer

    def _authorize(self, request: web.Request) -> None:
        token = _basic_username(request.headers.get("Authorization", ""))
        if token is None or not any(hmac.compare_digest(token, t) for t in self._tokens):
            raise ProfileApiError(
                401,
                "authentication_error",
                "A valid access token is required (Basic auth: the token as the user name,"
                " an empty password).",
            )
        if request.match_info["space"] != self._config.space:
            raise ProfileApiError(404, "not_found", "Space was not found.")

    def _count_request(self) -> None:
        limit = self._config.rate_limit_per_s
        if not limit:
            return
        now_s = time.monotonic()
        if now_s - self._window_started_s >= 1.0:
            self._window_started_s, self._window_requests = now_s, 0
        self._window_requests += 1
        if self._window_requests > limit:
            raise ProfileApiError(
                429, "rate_limit_error", f"Rate limit exceeded: {limit} requests per second."
            )

    # -- GET -------------------------------------------------------------------------------------

    async def read(self, request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        readers = {
            "traits": self._traits,
            "external_ids": self._external_ids,
            "events": self._events,
            "metadata": self._metadata,
            "links": self._links,
        }
        if resource not in readers:
            raise ProfileApiError(
                404,
                "not_found",
                f"Unknown resource {resource!r}; expected one of: {', '.join(readers)}.",
            )
        if resource == "traits":  # the hot path (personalisation): from the graph in memory
            pid = self._profile_in_memory(request)
        else:
            pid = await self._profile(request)
        return web.json_response(await readers[resource](request, pid))

    async def _profile(self, request: web.Request) -> str:
        collection, kind, value = _collection_and_identifier(request)
        pid = await reads.find(self._reader(), collection, kind, value)
        if pid is None:
            raise ProfileApiError(404, "not_found", NOT_FOUND)
        return pid

    def _profile_in_memory(self, request: web.Request) -> str:
        collection, kind, value = _collection_and_identifier(request)
        graph = self._identity.graph
        owner = graph.owner(collection, (kind, value))
        if owner is None:
            raise ProfileApiError(404, "not_found", NOT_FOUND)
        return graph.canonical(owner)

    def _memory_traits(self, pid: str, after: str, names: list[str] | None) -> list[reads.TraitRow]:
        """The profile's traits as the resolver holds them (at most the batch being written
        ahead of the store), without a hop to the database thread."""
        profile = self._identity.graph.profiles.get(pid)
        if profile is None:
            return []
        wanted = None if names is None else set(names)
        return [
            reads.TraitRow(name, trait.value, trait.source, format_ms(trait.updated_ms))
            for name, trait in sorted(profile.traits.items())
            if name > after and trait.value is not None and (wanted is None or name in wanted)
        ]

    def _reader(self) -> Any:
        assert self._identity.reader is not None
        return self._identity.reader

    async def _traits(self, request: web.Request, pid: str) -> dict[str, Any]:
        query = request.query
        limit = _limit(query, default=10, maximum=200)
        verbose = _flag(query, "verbose")
        trait_class = query.get("class")
        if trait_class is not None and trait_class not in TRAIT_CLASSES:
            raise ProfileApiError(
                400, "validation_error", f"class must be one of: {', '.join(TRAIT_CLASSES)}."
            )
        if trait_class is None:
            rows = self._memory_traits(pid, query.get("next", ""), _list(query, "include"))
        else:  # audiences and computed traits are Engage's
            rows = await self._engage_traits(pid, trait_class, query)
        page, more = rows[:limit], len(rows) > limit
        traits = {
            row.name: (
                {"value": row.value, "source_id": row.source_id, "updated_at": row.updated_at}
                if verbose
                else row.value
            )
            for row in page
        }
        return {
            "traits": traits,
            "cursor": _cursor(request, limit, more, page[-1].name if more else ""),
        }

    async def _engage_traits(self, pid: str, trait_class: str, query: Any) -> list[reads.TraitRow]:
        engage = self._identity.engage_traits
        if engage is None:  # no Engage stage (no definitions): no such traits
            return []
        after, names = query.get("next", ""), _list(query, "include")
        return [
            reads.TraitRow(key, value, "engage", format_ms(since_ms))
            for key, (value, since_ms) in sorted((await engage(pid, trait_class)).items())
            if key > after and (names is None or key in names)
        ]

    async def _external_ids(self, request: web.Request, pid: str) -> dict[str, Any]:
        query = request.query
        limit = _limit(query, default=10, maximum=100)
        offset = _offset(query)
        rows = await reads.external_ids(self._reader(), pid, types=_list(query, "include"))
        page = rows[offset : offset + limit]
        more = len(rows) > offset + limit
        data = [_external_id(row) for row in page]
        return {
            "data": data,
            "cursor": _cursor(request, limit, more, str(offset + limit) if more else ""),
        }

    async def _events(self, request: web.Request, pid: str) -> dict[str, Any]:
        query = request.query
        limit = _limit(query, default=10, maximum=100)
        sort = query.get("sort", "desc")
        if sort not in ("asc", "desc"):
            raise ProfileApiError(400, "validation_error", "sort must be asc or desc.")
        floor_ms = now_ms() - self._config.events_history_days * 86_400_000
        start = max(_time(query, "start", floor_ms), floor_ms)
        end = _time(query, "end", now_ms() + 86_400_000)
        cursor = _offset(query) or None
        rows = await reads.events(
            self._reader(),
            pid,
            start=format_ms(start),
            end=format_ms(end),
            before_seq=cursor if sort == "desc" else None,
            after_seq=cursor if sort == "asc" else None,
            descending=sort == "desc",
            include=_list(query, "include"),
            exclude=_list(query, "exclude"),
            limit=limit + 1,
        )
        page, more = rows[:limit], len(rows) > limit
        data = [self._event(row) for row in page]
        return {
            "data": data,
            "cursor": _cursor(request, limit, more, str(page[-1].seq) if more else ""),
        }

    def _event(self, row: reads.EventRow) -> dict[str, Any]:
        payload = _payload.decode(row.payload)
        found = extract(payload, self._identity.rules)
        external = [
            {"collection": collection, "type": kind, "id": value, "encoding": "none"}
            for collection, identifiers in (("users", found.users), ("accounts", found.accounts))
            for kind, value in identifiers
        ]
        kind = payload.get("type")
        return {
            "external_ids": external,
            "context": payload.get("context", {}),
            "type": kind,
            "message_id": payload.get("messageId"),
            "source_id": row.source_id,
            "timestamp": payload.get("timestamp"),
            "properties": payload.get(
                "traits" if kind in ("identify", "group") else "properties", {}
            ),
            "event": payload.get("event") or payload.get("name"),
            "related": {"users": None},
            "receipt_ts": row.received_at,
        }

    async def _metadata(self, request: web.Request, pid: str) -> dict[str, Any]:
        row = await reads.profile(self._reader(), pid)
        if row is None:
            raise ProfileApiError(404, "not_found", NOT_FOUND)
        metadata = {
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "expires_at": None,
            "first_message_id": row.first_message_id,
            "first_source_id": row.first_source_id,
            "last_message_id": row.last_message_id,
            "last_source_id": row.last_source_id,
        }
        if _flag(request.query, "verbose"):
            metadata["segment_id"] = pid
        return {"metadata": metadata}

    async def _links(self, request: web.Request, pid: str) -> dict[str, Any]:
        limit = _limit(request.query, default=20, maximum=20)
        conn = self._reader()
        others = await reads.linked(conn, pid)
        to_collection = "users" if pid.startswith("acc_") else "accounts"
        data = []
        for other in others[:limit]:
            ids = await reads.external_ids(conn, other)
            data.append(
                {"to_collection": to_collection, "external_ids": [_external_id(r) for r in ids]}
            )
        return {"data": data, "cursor": _cursor(request, limit, len(others) > limit, "")}

    # -- POST external_ids/delete ----------------------------------------------------------------

    async def delete_external_id(self, request: web.Request) -> web.Response:
        if request.match_info["collection"] != "users":
            raise ProfileApiError(
                400, "invalid_request_error", "External ids can only be deleted from users."
            )
        pid = await self._profile(request)
        wanted = _delete_request(await request.read())
        try:
            await self._identity.delete_identifier(pid, wanted)
        except IdentityError as exc:
            raise ProfileApiError(400, "invalid_request_error", str(exc)) from exc
        except KeyError as exc:
            raise ProfileApiError(404, "not_found", NOT_FOUND) from exc
        return web.json_response({"deleted_external_ids": [{"id": wanted[1], "type": wanted[0]}]})


class _Deletion(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    type: str


class _DeleteBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    delete_external_ids: list[_Deletion]


_delete_body = msgspec.json.Decoder(_DeleteBody)


def _delete_request(body: bytes) -> tuple[str, str]:
    try:
        parsed = _delete_body.decode(body)
    except msgspec.DecodeError as exc:
        raise ProfileApiError(400, "invalid_request_error", f"Invalid request body: {exc}") from exc
    if len(parsed.delete_external_ids) != 1:
        raise ProfileApiError(
            400,
            "validation_error",
            "delete_external_ids takes exactly one external id per request.",
        )
    only = parsed.delete_external_ids[0]
    return only.type, only.id


# -- parameters ----------------------------------------------------------------------------------


def _basic_username(header: str) -> bytes | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    username = decoded.partition(b":")[0]
    return username or None


def _collection_and_identifier(request: web.Request) -> tuple[str, str, str]:
    collection = request.match_info["collection"]
    if collection not in ("users", "accounts"):
        raise ProfileApiError(404, "not_found", f"Unknown collection {collection!r}.")
    return (collection, *_identifier(request.match_info["identifier"]))


def _identifier(text: str) -> tuple[str, str]:
    kind, sep, value = text.partition(":")
    if not sep or not value or not kind or kind != kind.lower():
        raise ProfileApiError(
            400,
            "invalid_request_error",
            f"Invalid identifier {text!r}: write it as <type>:<value> with a lowercase type,"
            " e.g. user_id:123 or email:jane%40example.com.",
        )
    return kind, value


def _limit(query: Any, *, default: int, maximum: int) -> int:
    text = query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise ProfileApiError(
            400, "validation_error", f"limit must be an integer from 1 to {maximum}, got {text!r}."
        )
    return int(text)


def _offset(query: Any) -> int:
    text = query.get("next", "")
    if not text:
        return 0
    if not text.isdigit():
        raise ProfileApiError(400, "validation_error", f"Invalid cursor next={text!r}.")
    return int(text)


def _flag(query: Any, name: str) -> bool:
    return str(query.get(name, "false")).lower() in ("true", "1")


def _list(query: Any, name: str) -> list[str] | None:
    text = query.get(name)
    if text is None:
        return None
    return [item.strip() for item in text.split(",") if item.strip()]


def _time(query: Any, name: str, default_ms: int) -> int:
    text = query.get(name)
    if text is None:
        return default_ms
    try:
        return to_epoch_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError as exc:
        raise ProfileApiError(
            400, "validation_error", f"{name} must be an ISO-8601 time, got {text!r}."
        ) from exc


def _cursor(request: web.Request, limit: int, more: bool, next_token: str) -> dict[str, Any]:
    params = {k: v for k, v in request.query.items() if k != "next"}
    if next_token:
        params["next"] = next_token
    url = request.path + ("?" + urlencode(params) if params else "")
    return {"url": url, "has_more": more, "next": next_token, "limit": limit}


def _external_id(row: reads.ExternalIdRow) -> dict[str, Any]:
    return {
        "source_id": row.source_id,
        "collection": row.collection,
        "id": row.id,
        "type": row.type,
        "created_at": row.created_at,
        "encoding": "none",
        "first_message_id": row.first_message_id,
    }
