"""GA4's Measurement Protocol as Google documents it (developers.google.com/analytics/
devguides/collection/protocol/ga4: reference, sending events, validating events):

- `POST /mp/collect?measurement_id=G-...&api_secret=...`: always 2xx (204), whatever the
  payload; what breaks the rules is dropped without a word. This server keeps what it would
  drop in `dropped`, so a test can show cdpd never sends it.
- `POST /debug/mp/collect`: 200 with `{"validationMessages": [{"fieldPath", "description",
  "validationCode"}]}`, naming what the collection endpoint would drop.

Rules: a known measurement id and api secret; `client_id` required; 1 to 25 events; names of
events and parameters start with a letter, hold letters, digits and `_`, at most 40
characters, no `ga_`/`google_`/`firebase_` prefix, no reserved event name; at most 25
parameters an event; parameter values strings (up to 100 characters, `page_location` 1,000,
`page_referrer` 420, `page_title` 300) or numbers, lists only as `items`, items with an
`item_id` or `item_name`; user property names up to 24 characters and values up to 36; a
body under 130 kB; currencies that are ISO 4217 codes; `timestamp_micros` at most 72 hours in
the past."""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec
from aiohttp import web

from tests.contracts.base import ContractServer

MEASUREMENT_ID = "G-CDPD12345"
API_SECRET = "mp-secret-Zq9"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
_PREFIXES = ("ga_", "google_", "firebase_")
_RESERVED = {
    "ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query", "ad_reward",
    "adunit_exposure", "app_background", "app_clear_data", "app_exception", "app_install",
    "app_remove", "app_store_refund", "app_update", "app_upgrade", "dynamic_link_app_open",
    "dynamic_link_app_update", "dynamic_link_first_open", "error", "firebase_campaign",
    "firebase_in_app_message_action", "firebase_in_app_message_dismiss",
    "firebase_in_app_message_impression", "first_open", "first_visit", "in_app_purchase",
    "notification_dismiss", "notification_foreground", "notification_open",
    "notification_receive", "notification_send", "os_update", "screen_view", "session_start",
    "user_engagement",
}  # fmt: skip
MAX_BACKDATING_MICROS = 72 * 3600 * 1_000_000
_LONG = {"page_location": 1000, "page_referrer": 420, "page_title": 300}
_CURRENCIES = {"USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "SEK", "NOK", "DKK", "BRL"}


def _message(path: str, description: str, code: str) -> dict[str, str]:
    return {"fieldPath": path, "description": description, "validationCode": code}


class Ga4Collect(ContractServer):
    def __init__(self) -> None:
        super().__init__()
        self.dropped: list[dict[str, str]] = []

    @property
    def collected(self) -> list[Any]:
        """The bodies the collection endpoint took."""
        return [call.json for call in self.accepted if call.path == "/mp/collect"]

    async def handle(self, request: web.Request, body: bytes) -> web.Response:
        if request.method != "POST" or request.path not in ("/mp/collect", "/debug/mp/collect"):
            return web.Response(status=404)
        messages = validate(dict(request.query), body)
        if request.path == "/debug/mp/collect":
            return web.json_response({"validationMessages": messages})
        self.dropped += messages
        return web.Response(status=204)


def validate(query: dict[str, str], body: bytes) -> list[dict[str, str]]:
    if query.get("measurement_id") != MEASUREMENT_ID or query.get("api_secret") != API_SECRET:
        return [_message("", "Unknown measurement_id or api_secret.", "VALUE_INVALID")]
    if len(body) >= 130_000:
        return [_message("", "The request body is larger than 130kB.", "VALUE_OUT_OF_BOUNDS")]
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return [_message("", "Unable to parse the payload as JSON.", "VALUE_INVALID")]
    messages: list[dict[str, str]] = []
    if not isinstance(payload.get("client_id"), str) or not payload["client_id"]:
        messages.append(_message("client_id", "client_id is required.", "VALUE_REQUIRED"))
    events = payload.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= 25:
        messages.append(_message("events", "1 to 25 events a request.", "EXCEEDED_MAX_ENTITIES"))
        return messages
    for index, event in enumerate(events):
        messages += _event(index, event)
    properties = payload.get("user_properties", {})
    for name, holder in properties.items():
        value = holder.get("value") if isinstance(holder, dict) else None
        if len(name) > 24 or not _NAME.match(name) or name.startswith(_PREFIXES):
            messages.append(
                _message(
                    f"user_properties.{name}", f"Invalid user property [{name}].", "NAME_INVALID"
                )
            )
        elif isinstance(value, str) and len(value) > 36:
            messages.append(
                _message(f"user_properties.{name}", "Value longer than 36.", "VALUE_OUT_OF_BOUNDS")
            )
    return messages


def _event(index: int, event: Any) -> list[dict[str, str]]:
    where = f"events[{index}]"
    name = event.get("name") if isinstance(event, dict) else None
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith(_PREFIXES):
        text = f"Event at index: [{index}] has invalid name [{name}]."
        return [_message(f"{where}.name", text, "NAME_INVALID")]
    if name in _RESERVED:
        text = f"Event at index: [{index}] has name [{name}] which is reserved."
        return [_message(f"{where}.name", text, "NAME_RESERVED")]
    micros = event.get("timestamp_micros")
    if isinstance(micros, int) and time.time() * 1_000_000 - micros > MAX_BACKDATING_MICROS:
        text = "timestamp_micros is more than 72 hours in the past."
        return [_message(f"{where}.timestamp_micros", text, "VALUE_OUT_OF_BOUNDS")]
    params = event.get("params", {})
    if len(params) > 25:
        return [_message(f"{where}.params", "More than 25 parameters.", "EXCEEDED_MAX_ENTITIES")]
    messages = []
    for key, value in params.items():
        place = f"{where}.params.{key}"
        if not _NAME.match(key) or key.startswith(_PREFIXES):
            messages.append(_message(place, f"Invalid parameter name [{key}].", "NAME_INVALID"))
        elif key == "items":
            messages += _items(place, value)
        elif key == "currency" and value not in _CURRENCIES:
            messages.append(_message(place, f"Unknown currency [{value}].", "VALUE_INVALID"))
        else:
            messages += _value(place, key, value)
    return messages


def _items(place: str, items: Any) -> list[dict[str, str]]:
    if not isinstance(items, list):
        return [_message(place, "items must be a list.", "VALUE_INVALID")]
    messages = []
    for number, item in enumerate(items):
        if not isinstance(item, dict) or not ({"item_id", "item_name"} & item.keys()):
            text = "Item requires item_id or item_name."
            messages.append(_message(f"{place}[{number}]", text, "VALUE_REQUIRED"))
            continue
        for key, value in item.items():
            messages += _value(f"{place}[{number}].{key}", key, value)
    return messages


def _value(place: str, key: str, value: Any) -> list[dict[str, str]]:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return [_message(place, "Values are strings or numbers.", "VALUE_INVALID")]
    if isinstance(value, str) and len(value) > _LONG.get(key, 100):
        return [_message(place, "Value too long.", "VALUE_OUT_OF_BOUNDS")]
    return []
