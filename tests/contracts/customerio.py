"""Customer.io's Track API (docs.customer.io/api/track, "Invalid Track API requests"): Basic
auth with site id and API key, else `401 {"meta":{"error":"Unauthorized request"}}`; v1
errors as `400 {"meta":{"error": ...}}` with the documented messages and limits (identifier
and attribute names up to 150 bytes, at most 300 attributes, values up to 1,000 bytes, event
names up to 100 bytes, event data an object up to 100,000 bytes, timestamps in Unix seconds,
event ids (for deduplication) that are ULIDs);
v2 errors as `400 {"errors":[{"reason", "field", "message"}]}`; 200 `{}` on success.
`DELETE /api/v1/customers/{identifier}` deletes a person (a regulation's deletion)."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import unquote

import msgspec
from aiohttp import web

from tests.contracts.base import ContractServer

SITE_ID = "site-0123"
API_KEY = "key-secret-4567"
_MAX_ID_BYTES = 150
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def _ok() -> web.Response:
    return web.json_response({})


def _v1_error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"meta": {"error": message}}, status=status)


def _v2_error(field: str, message: str) -> web.Response:
    return web.json_response(
        {"errors": [{"reason": "invalid", "field": field, "message": message}]}, status=400
    )


def _size(value: Any) -> int:
    return len(value.encode() if isinstance(value, str) else msgspec.json.encode(value))


class CustomerIoTrack(ContractServer):
    def __init__(self, site_id: str = SITE_ID, api_key: str = API_KEY) -> None:
        super().__init__()
        self._authorization = "Basic " + base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self.deleted: list[str] = []  # identifiers of deleted people, in order

    async def handle(self, request: web.Request, body: bytes) -> web.Response:
        if request.headers.get("Authorization") != self._authorization:
            return _v1_error("Unauthorized request", 401)
        if request.method == "DELETE":
            return self._delete(request)
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return _v1_error("invalid JSON")
        if not isinstance(payload, dict):
            return _v1_error("request body must be a JSON object")
        raw = request.raw_path.split("?", 1)[0].strip("/").split("/")
        parts = [unquote(part) for part in raw]
        if parts[:3] == ["api", "v1", "customers"]:
            if request.method == "PUT" and len(parts) == 4:
                return self._identify(parts[3], payload)
            if request.method == "POST" and len(parts) == 5 and parts[4] == "events":
                return self._event(payload, person=parts[3])
        if (request.method, request.path) == ("POST", "/api/v1/events"):
            return self._event(payload, person=None)
        if (request.method, request.path) == ("POST", "/api/v1/merge_customers"):
            return self._merge(payload)
        if (request.method, request.path) == ("POST", "/api/v2/entity"):
            return self._entity(payload)
        return web.json_response({"meta": {"error": "not found"}}, status=404)

    def _delete(self, request: web.Request) -> web.Response:
        """`DELETE /api/v1/customers/{identifier}`: the person and their data; 200 `{}` (also
        for a person never identified)."""
        raw = request.raw_path.split("?", 1)[0].strip("/").split("/")
        parts = [unquote(part) for part in raw]
        if parts[:3] != ["api", "v1", "customers"] or len(parts) != 4:
            return web.json_response({"meta": {"error": "not found"}}, status=404)
        problem = _identifier(parts[3])
        if problem:
            return _v1_error(problem)
        self.deleted.append(parts[3])
        return _ok()

    def _identify(self, person: str, attributes: dict[str, Any]) -> web.Response:
        problem = _identifier(person) or _attribute_problem(attributes)
        return _v1_error(problem) if problem else _ok()

    def _event(self, event: dict[str, Any], person: str | None) -> web.Response:
        if person is not None and (problem := _identifier(person)):
            return _v1_error(problem)
        name = event.get("name")
        if not isinstance(name, str) or not name.strip():
            return _v1_error("event name must not be blank")
        if len(name.encode()) > 100:
            return _v1_error("event name cannot be longer than 100 bytes")
        if event.get("type", "event") not in ("event", "page", "screen"):
            return _v1_error("type must be one of event, page, screen")
        data = event.get("data", {})
        if not isinstance(data, dict):
            return _v1_error(
                'event data must be a hash (e.g., send "data":{} instead of "data":"")'
            )
        if _size(data) > 100_000:
            return _v1_error("event data cannot be longer than 100000 bytes")
        timestamp = event.get("timestamp")
        if timestamp is not None and (not isinstance(timestamp, int) or timestamp > 10**11):
            return _v1_error("timestamp must be a valid unix timestamp")
        event_id = event.get("id")
        if event_id is not None and not (
            isinstance(event_id, str) and _ULID.match(event_id.upper())
        ):
            return _v1_error("id must be a valid ULID")
        anonymous = event.get("anonymous_id")
        if anonymous is not None and not isinstance(anonymous, str):
            return _v1_error("anonymous_id must be a string")
        return _ok()

    def _merge(self, payload: dict[str, Any]) -> web.Response:
        for side in ("primary", "secondary"):
            who = payload.get(side)
            if (
                not isinstance(who, dict)
                or len(who) != 1
                or next(iter(who))
                not in (
                    "id",
                    "email",
                    "cio_id",
                )
            ):
                return _v1_error(f"{side} must have exactly one of id, email, cio_id")
        if payload["primary"] == payload["secondary"]:
            return _v1_error("primary and secondary cannot be the same person")
        return _ok()

    def _entity(self, payload: dict[str, Any]) -> web.Response:
        if payload.get("type") not in ("person", "object", "delivery"):
            return _v2_error("type", "type must be one of person, object, delivery")
        identifiers = payload.get("identifiers")
        if not isinstance(identifiers, dict) or not identifiers:
            return _v2_error("identifiers", "identifiers is required")
        if payload["type"] == "object":
            if payload.get("action") not in ("identify", "identify_anonymous", "delete"):
                return _v2_error("action", "action is not valid for an object")
            for key in ("object_type_id", "object_id"):
                value = identifiers.get(key)
                if not isinstance(value, str) or not value:
                    return _v2_error(f"identifiers.{key}", f"{key} must be a non-empty string")
            for relationship in payload.get("cio_relationships", []):
                related = (
                    relationship.get("identifiers") if isinstance(relationship, dict) else None
                )
                if not isinstance(related, dict) or not related:
                    return _v2_error("cio_relationships", "a relationship needs identifiers")
        attributes = payload.get("attributes", {})
        if not isinstance(attributes, dict):
            return _v2_error("attributes", "attributes must be an object")
        problem = _attribute_problem(attributes)
        return _v2_error("attributes", problem) if problem else _ok()


def _identifier(person: str) -> str | None:
    if not person:
        return "id attribute cannot be an empty string"
    if len(person.encode()) > _MAX_ID_BYTES:
        return "id cannot be longer than 150 bytes"
    return None


def _attribute_problem(attributes: dict[str, Any]) -> str | None:
    if len(attributes) > 300:
        return "cannot identify more than 300 attributes in one request"
    for name, value in attributes.items():
        if len(name.encode()) > 150:
            return "attribute name cannot be longer than 150 bytes"
        if _size(value) > 1000:
            return f"value for attribute '{name}' cannot be longer than 1000 bytes"
    created_at = attributes.get("created_at")
    if created_at is not None and not isinstance(created_at, int):
        return "created_at must be a valid unix timestamp"
    return None
