"""The Customer.io destination: Track API requests, one per message and action, with Basic auth
(`site_id:api_key`), as Segment's Customer.io (Actions) presets make them.

    identify_person    PUT  /api/v1/customers/{id}          the traits as attributes
    track_event        POST /api/v1/customers/{id}/events   {name, data, timestamp, id}
                       POST /api/v1/events                  the same with anonymous_id
    track_page_view    the same, `type: "page"`, named by the page's URL
    track_screen_view  the same, `type: "screen"`, named by the screen
    identify_object    POST /api/v2/entity                  an object, related to the person
    merge_people       POST /api/v1/merge_customers         (no preset; subscribe alias to it)

Timestamps become Unix seconds (ISO-8601 attribute values too, unless `convert_timestamp` is
false); the event `id`, Customer.io's key for dropping a resent event, is a ULID made from the
messageId (customerio_values.event_ulid). 401 is
dead at once (and marks the destination unhealthy); 400 is dead with Customer.io's reason;
429 (Retry-After honoured) and 5xx are retried.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from yarl import URL

from cdpd import __version__
from cdpd.destinations import customerio_values as values
from cdpd.destinations import http
from cdpd.destinations.actions import Action, ActionKind, Field, Prepared, Preset
from cdpd.destinations.base import Result, secret
from cdpd.destinations.settings import CustomerIoDestination
from cdpd.settings import ConfigError

_PERSON = Field("the person's id (an email or `cio_<id>` works too)", {"@path": "$.userId"})
_ANONYMOUS = Field("the anonymous id, used when there is no person id", {"@path": "$.anonymousId"})
_EVENT_ID = Field("the event's id, Customer.io's deduplication key", {"@path": "$.messageId"})
_TIMESTAMP = Field("when it happened (sent as Unix seconds)", {"@path": "$.timestamp"})
_DATA = Field("the event's attributes", {"@path": "$.properties"})
_CONVERT = Field("turn ISO-8601 values into Unix seconds", True)


def _either(first: str, second: str) -> dict[str, Any]:
    return {
        "@if": {"exists": {"@path": first}, "then": {"@path": first}, "else": {"@path": second}}
    }


KINDS = {
    "identify_person": ActionKind(
        "identify_person",
        "Create or update a person: PUT /api/v1/customers/{id}",
        {
            "id": Field("the person's id", _either("$.userId", "$.traits.email"), required=True),
            "anonymous_id": Field(
                "ties the anonymous activity to the person", {"@path": "$.anonymousId"}
            ),
            "email": Field("the person's email", {"@path": "$.traits.email"}),
            "created_at": Field(
                "when the person was created", _either("$.traits.created_at", "$.traits.createdAt")
            ),
            "custom_attributes": Field("the person's attributes", {"@path": "$.traits"}),
            "convert_timestamp": _CONVERT,
        },
    ),
    "track_event": ActionKind(
        "track_event",
        "Track an event: POST /api/v1/customers/{id}/events, or /api/v1/events when anonymous",
        {
            "id": _PERSON,
            "anonymous_id": _ANONYMOUS,
            "name": Field("the event's name", {"@path": "$.event"}, required=True),
            "event_id": _EVENT_ID,
            "timestamp": _TIMESTAMP,
            "data": _DATA,
            "convert_timestamp": _CONVERT,
        },
    ),
    "track_page_view": ActionKind(
        "track_page_view",
        'Track a page view: an event of type "page" named by its URL',
        {
            "id": _PERSON,
            "anonymous_id": _ANONYMOUS,
            "url": Field("the page's URL", {"@path": "$.properties.url"}, required=True),
            "event_id": _EVENT_ID,
            "timestamp": _TIMESTAMP,
            "data": _DATA,
            "convert_timestamp": _CONVERT,
        },
    ),
    "track_screen_view": ActionKind(
        "track_screen_view",
        'Track a screen view: an event of type "screen" named by the screen',
        {
            "id": _PERSON,
            "anonymous_id": _ANONYMOUS,
            "name": Field("the screen's name", {"@path": "$.name"}, required=True),
            "event_id": _EVENT_ID,
            "timestamp": _TIMESTAMP,
            "data": _DATA,
            "convert_timestamp": _CONVERT,
        },
    ),
    "identify_object": ActionKind(
        "identify_object",
        "Create or update an object and relate the person to it: POST /api/v2/entity",
        {
            "id": Field("the object's id", {"@path": "$.groupId"}, required=True),
            "object_type_id": Field(
                'the object type ("1" when not given)',
                _either("$.traits.object_type_id", "$.traits.objectTypeId"),
            ),
            "created_at": Field(
                "when the object was created", _either("$.traits.created_at", "$.traits.createdAt")
            ),
            "custom_attributes": Field("the object's attributes", {"@path": "$.traits"}),
            "relationship_attributes": Field(
                "attributes of the person's relationship to the object",
                {"@path": "$.traits.relationshipAttributes"},
            ),
            "user_id": Field("the person related to the object", {"@path": "$.userId"}),
            "anonymous_id": Field(
                "the anonymous person related, when there is no user id", {"@path": "$.anonymousId"}
            ),
            "convert_timestamp": _CONVERT,
        },
    ),
    "merge_people": ActionKind(
        "merge_people",
        "Merge a secondary person into a primary one: POST /api/v1/merge_customers",
        {
            "primary": Field("the person who remains", {"@path": "$.userId"}, required=True),
            "secondary": Field(
                "the person merged into the primary", {"@path": "$.previousId"}, required=True
            ),
        },
    ),
}
# Segment's Customer.io (Actions) presets for the message types cdpd takes; alias has none.
PRESETS = (
    Preset("Create or Update Person", "identify_person", 'type = "identify"'),
    Preset(
        "Track Event",
        "track_event",
        'type = "track" and event != "Relationship Deleted" and event != "User Deleted"'
        ' and event != "User Suppressed" and event != "User Unsuppressed"'
        ' and event != "Object Deleted" and event != "Report Delivery Event"'
        ' and event != "Report Content Event"',
    ),
    Preset("Track Page View", "track_page_view", 'type = "page"'),
    Preset("Track Screen View", "track_screen_view", 'type = "screen"'),
    Preset("Create or Update Object", "identify_object", 'type = "group"'),
)
_EVENT_TYPES = {"track_event": None, "track_page_view": "page", "track_screen_view": "screen"}
_OWN_KEYS = ("created_at", "createdAt", "object_type_id", "objectTypeId", "relationshipAttributes")
_encoder = msgspec.json.Encoder()


class Request(msgspec.Struct, frozen=True):
    method: str
    path: str
    body: dict[str, Any]


class CustomerIo:
    def __init__(self, config: CustomerIoDestination, actions: list[Action]) -> None:
        self.name = config.name
        self.actions = actions
        site_id = secret(config.name, config.site_id, config.site_id_env, "site_id")
        api_key = secret(config.name, config.api_key, config.api_key_env, "api_key")
        if not site_id or not api_key:
            raise ConfigError(
                f"destination {config.name!r}: needs site_id (or site_id_env) and api_key "
                "(or api_key_env)"
            )
        self._base = URL(config.api_url)
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        token = base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self._secrets = [api_key, token]
        self._headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "User-Agent": f"cdpd/{__version__}",
        }

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        return list(await asyncio.gather(*(self._send_one(session, item) for item in items)))

    async def _send_one(self, session: aiohttp.ClientSession, item: Prepared) -> Result:
        made = request_for(item.kind, item.fields)
        if isinstance(made, str):
            return Result(None, f"{item.action}: {made}", invalid=True)
        # The path is sent as made (`encoded`): a client would resolve `%2E%2E` as `..`.
        url = self._base.with_path(self._base.raw_path.rstrip("/") + made.path, encoded=True)
        answer = await http.request(
            session,
            made.method,
            url,
            body=_encoder.encode(made.body),
            headers=self._headers,
            limit=self._timeout,
            secrets=self._secrets,
        )
        result = answer.result
        if result.status is not None and result.status >= 400:
            reason = values.reason_of(answer.body)
            if reason:
                error = http.redact(f"HTTP {result.status}: {reason}", self._secrets)
                return Result(result.status, error, result.retry_after_s)
        return result


def request_for(kind: str, fields: dict[str, Any]) -> Request | str:
    """The request an action's fields make, or why there can be none."""
    if kind == "identify_person":
        return _identify_person(fields)
    if kind in _EVENT_TYPES:
        return _event(fields, _EVENT_TYPES[kind])
    if kind == "identify_object":
        return _identify_object(fields)
    return _merge(fields)


def _identify_person(fields: dict[str, Any]) -> Request | str:
    person = _text(fields.get("id"))
    if person is None:
        return "no person id"
    attributes = _attributes(fields.get("custom_attributes"))
    for key in ("created_at", "email", "anonymous_id"):
        if fields.get(key) not in (None, ""):
            attributes[key] = fields[key]
    if fields.get("convert_timestamp", True) is not False:
        attributes = values.convert_timestamps(attributes)
    elif "created_at" in attributes:
        attributes["created_at"] = values.unix_s(attributes["created_at"])
    return Request("PUT", f"/api/v1/customers/{_segment(person)}", attributes)


def _event(fields: dict[str, Any], event_type: str | None) -> Request | str:
    name = fields.get("url") if event_type == "page" else fields.get("name")
    body: dict[str, Any] = {"name": name}
    if event_type is not None:
        body["type"] = event_type
    data = fields.get("data")
    if isinstance(data, dict):
        body["data"] = (
            values.convert_timestamps(data)
            if fields.get("convert_timestamp", True) is not False
            else data
        )
    if fields.get("timestamp") is not None:
        body["timestamp"] = values.unix_s(fields["timestamp"])
    event_id = _text(fields.get("event_id"))
    if event_id:
        body["id"] = values.event_ulid(event_id, fields.get("timestamp"))
    person = _text(fields.get("id"))
    if person is not None:
        return Request("POST", f"/api/v1/customers/{_segment(person)}/events", body)
    anonymous = _text(fields.get("anonymous_id"))
    if anonymous is None:
        return "no person id and no anonymous id"
    body["anonymous_id"] = anonymous
    return Request("POST", "/api/v1/events", body)


def _identify_object(fields: dict[str, Any]) -> Request | str:
    object_id = _text(fields.get("id"))
    if object_id is None:
        return "no object id"
    convert = fields.get("convert_timestamp", True) is not False
    attributes = _attributes(fields.get("custom_attributes"))
    if fields.get("created_at") not in (None, ""):
        attributes["created_at"] = fields["created_at"]
    body: dict[str, Any] = {
        "type": "object",
        "action": "identify",
        "identifiers": {
            "object_type_id": str(fields.get("object_type_id") or "1"),
            "object_id": object_id,
        },
        "attributes": values.convert_timestamps(attributes) if convert else attributes,
    }
    user_id, anonymous = _text(fields.get("user_id")), _text(fields.get("anonymous_id"))
    related = (
        values.identifiers(user_id)
        if user_id
        else {"anonymous_id": anonymous}
        if anonymous
        else None
    )
    if related is not None:
        if user_id is None:
            body["action"] = "identify_anonymous"
        relationship: dict[str, Any] = {"identifiers": related}
        extra = fields.get("relationship_attributes")
        if isinstance(extra, dict) and extra:
            relationship["relationship_attributes"] = (
                values.convert_timestamps(extra) if convert else extra
            )
        body["cio_relationships"] = [relationship]
    return Request("POST", "/api/v2/entity", body)


def _merge(fields: dict[str, Any]) -> Request | str:
    primary, secondary = _text(fields.get("primary")), _text(fields.get("secondary"))
    if primary is None or secondary is None:
        return "merging needs a primary and a secondary person"
    if primary == secondary:
        return "the primary and secondary person are the same"
    body = {"primary": values.identifiers(primary), "secondary": values.identifiers(secondary)}
    return Request("POST", "/api/v1/merge_customers", body)


def _segment(value: str) -> str:
    """An id as one path segment: every reserved character escaped, and `.` and `..`, which
    would mean "this" and "the parent" path, as `%2E` and `%2E%2E`."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _attributes(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {key: item for key, item in value.items() if key not in _OWN_KEYS}


def _text(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    return value if isinstance(value, str) and value else None
