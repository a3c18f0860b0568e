"""The Google Analytics 4 destination: Measurement Protocol requests, as Segment's Google
Analytics 4 Cloud actions shape them.

`POST <api_url>?measurement_id=<id>&api_secret=<secret>` with
`{"client_id", "user_id", "user_properties", "events": [{"name", "params", "timestamp_micros"}]}`:
one client per request (so a batch is split by client, then user and user properties), at
most 25 events and 130 kB a request. Every event is checked against GA4's rules first
(ga4_rules): the collection endpoint answers 2xx even to what it then drops, so an event that
cannot be mended is dead at once, with the reason, rather than lost without a word.

With `validate = true` each request goes first to the validation server (`/debug/mp/collect`),
whose `validationMessages` name the events GA4 would drop: those are dead with GA4's words,
the rest are sent to the collection endpoint. That costs a second request per request, and
Google's validation server is meant for development, not for production traffic.

The api_secret travels in the query string: it is never logged, and error texts lose it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from cdpd import __version__
from cdpd.clock import Clock, SystemClock
from cdpd.destinations import ga4_rules as rules
from cdpd.destinations import http
from cdpd.destinations.actions import Action, ActionKind, Field, Prepared, Preset
from cdpd.destinations.base import Result, required_secret
from cdpd.destinations.settings import Ga4Destination
from cdpd.model.timestamps import parse_ms
from cdpd.settings import ConfigError


def _path(path: str) -> dict[str, str]:
    return {"@path": path}


_COMMON = {
    "client_id": Field(
        "GA4's client id, the browser or device: anonymousId, else userId",
        {
            "@if": {
                "exists": _path("$.anonymousId"),
                "then": _path("$.anonymousId"),
                "else": _path("$.userId"),
            }
        },
        required=True,
    ),
    "user_id": Field("GA4's User-ID", _path("$.userId")),
    "timestamp_micros": Field("when it happened (sent as Unix microseconds)", _path("$.timestamp")),
    "engagement_time_msec": Field("engagement time; 1 so that GA4 counts the user", 1),
    "params": Field("more event parameters, merged over the others"),
    "user_properties": Field("user properties: names up to 24 characters, values up to 36"),
}
_PRODUCT = {
    "item_id": _path("$.product_id"),
    "item_name": _path("$.name"),
    "affiliation": _path("$.affiliation"),
    "coupon": _path("$.coupon"),
    "index": _path("$.position"),
    "item_brand": _path("$.brand"),
    "item_category": _path("$.category"),
    "item_variant": _path("$.variant"),
    "price": _path("$.price"),
    "quantity": _path("$.quantity"),
}
_PRODUCTS = {"@arrayPath": ["$.properties.products", _PRODUCT]}
_ONE_PRODUCT = [
    {
        key: _path("$.properties." + path["@path"][2:])
        for key, path in _PRODUCT.items()
        if key != "index"
    }
]


def _order(items_required: bool, transaction_required: bool) -> dict[str, Field]:
    return {
        "currency": Field(
            "3-letter ISO 4217 currency", _path("$.properties.currency"), required=True
        ),
        "transaction_id": Field(
            "the order id", _path("$.properties.order_id"), required=transaction_required
        ),
        "value": Field("the order's value", _path("$.properties.total")),
        "affiliation": Field("the store", _path("$.properties.affiliation")),
        "coupon": Field("the coupon used", _path("$.properties.coupon")),
        "shipping": Field("shipping cost", _path("$.properties.shipping")),
        "tax": Field("tax", _path("$.properties.tax")),
        "items": Field("the products", _PRODUCTS, required=items_required),
    }


def _product(value: str) -> dict[str, Field]:
    return {
        "currency": Field("3-letter ISO 4217 currency", _path("$.properties.currency")),
        "value": Field("the value", _path(value)),
        "items": Field("the product", _ONE_PRODUCT, required=True),
    }


def _cart(value: str) -> dict[str, Field]:
    return {
        "currency": Field("3-letter ISO 4217 currency", _path("$.properties.currency")),
        "value": Field("the value", _path(value)),
        "coupon": Field("the coupon used", _path("$.properties.coupon")),
        "items": Field("the products", _PRODUCTS, required=True),
    }


_PRICE, _VALUE = "$.properties.price", "$.properties.value"
_METHOD = {"method": Field("how", _path("$.properties.method"))}
# kind, which is also the GA4 event's name: (the Segment event its preset takes, what it is,
# its parameter fields)
_RECOMMENDED: dict[str, tuple[str, str, dict[str, Field]]] = {
    "purchase": ("Order Completed", "A purchase", _order(True, True)),
    "refund": ("Order Refunded", "A refund", _order(False, True)),
    "add_to_cart": ("Product Added", "A product added to the cart", _product(_PRICE)),
    "remove_from_cart": ("Product Removed", "A product taken from the cart", _product(_PRICE)),
    "view_item": ("Product Viewed", "A product viewed", _product(_PRICE)),
    "view_cart": ("Cart Viewed", "The cart viewed", _cart(_VALUE)),
    "begin_checkout": ("Checkout Started", "A checkout started", _cart(_VALUE)),
    "search": (
        "Products Searched",
        "A search",
        {"search_term": Field("what was searched", _path("$.properties.query"), required=True)},
    ),
    "sign_up": ("Signed Up", "A sign-up", _METHOD),
    "login": ("Signed In", "A login", _METHOD),
}
_PAGE_VIEW = {
    "page_location": Field("the page's URL", _path("$.context.page.url")),
    "page_referrer": Field("the previous page's URL", _path("$.context.page.referrer")),
    "page_title": Field("the page's title", _path("$.context.page.title")),
}
_CUSTOM = {
    "name": Field(
        "the event's name, made a GA4 name (snake_case)", _path("$.event"), required=True
    ),
    "lowercase": Field("lowercase the name (GA4 names are case sensitive)", True),
}

KINDS: dict[str, ActionKind] = {
    kind: ActionKind(kind, f"{text}: the GA4 {kind} event", {**_COMMON, **fields})
    for kind, (_, text, fields) in _RECOMMENDED.items()
}
KINDS["page_view"] = ActionKind(
    "page_view", "A page view: the GA4 page_view event", {**_COMMON, **_PAGE_VIEW}
)
KINDS["custom_event"] = ActionKind(
    "custom_event",
    "Any event under its own name, snake_cased; its properties as parameters",
    {**_COMMON, **_CUSTOM, "params": Field("the event parameters", _path("$.properties"))},
)
_TAKEN = [segment for segment, _, _ in _RECOMMENDED.values()]
PRESETS = (
    *(
        Preset(kind.replace("_", " ").title(), kind, f'type = "track" and event = "{segment}"')
        for kind, (segment, _, _) in _RECOMMENDED.items()
    ),
    Preset("Page View", "page_view", 'type = "page"'),
    Preset(
        "Custom Event",
        "custom_event",
        'type = "track" and ' + " and ".join(f'event != "{segment}"' for segment in _TAKEN),
    ),
)
_OWN_FIELDS = (
    "client_id",
    "user_id",
    "timestamp_micros",
    "params",
    "user_properties",
    "name",
    "lowercase",
)
_INDEX = re.compile(r"events\[(\d+)\]|index: \[(\d+)\]")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class Event(msgspec.Struct, frozen=True):
    """One item as GA4 takes it: whose it is, and the event itself."""

    client: tuple[str, str | None, str]  # client_id, user_id, user properties as JSON
    user_properties: dict[str, Any]
    event: dict[str, Any]
    size_bytes: int


class Ga4:
    def __init__(
        self, config: Ga4Destination, actions: list[Action], clock: Clock | None = None
    ) -> None:
        self.name = config.name
        self._clock = clock or SystemClock()
        self.actions = actions
        api_secret = required_secret(
            config.name, config.api_secret, config.api_secret_env, "api_secret"
        )
        self._query = {"measurement_id": config.measurement_id, "api_secret": api_secret}
        self._secrets = [api_secret]
        self._url = config.api_url
        self._debug_url = debug_url(config.name, config.api_url) if config.validate else None
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._headers = {"Content-Type": "application/json", "User-Agent": f"cdpd/{__version__}"}

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        results: list[Result | None] = [None] * len(items)
        made: list[tuple[int, Event]] = []
        now_ms = self._clock.now_ms()
        for index, item in enumerate(items):
            try:
                made.append((index, event_of(item.kind, item.fields, now_ms)))
            except rules.Invalid as exc:
                results[index] = Result(None, f"{item.action}: {exc}", invalid=True)
        requests = [chunk for group in _by_client(made) for chunk in _chunks(group)]
        answers = await asyncio.gather(*(self._send_chunk(session, chunk) for chunk in requests))
        for chunk, chunk_results in zip(requests, answers, strict=True):
            for (index, _), result in zip(chunk, chunk_results, strict=True):
                results[index] = result
        return [r if r is not None else Result(None, "not sent") for r in results]

    async def _send_chunk(
        self, session: aiohttp.ClientSession, chunk: list[tuple[int, Event]]
    ) -> list[Result]:
        if self._debug_url is None:
            result = await self._post(session, self._url, chunk)
            return [result.result] * len(chunk)
        checked = await self._post(session, self._debug_url, chunk)
        if checked.result.status is None or checked.result.status >= 300:
            return [checked.result] * len(chunk)
        refused = validation_messages(checked.body, len(chunk))
        kept = [pair for number, pair in enumerate(chunk) if number not in refused]
        sent = (await self._post(session, self._url, kept)).result if kept else None
        return [
            Result(None, f"GA4 validation: {refused[number]}", invalid=True)
            if number in refused
            else sent or Result(None, "not sent")
            for number in range(len(chunk))
        ]

    async def _post(
        self, session: aiohttp.ClientSession, url: str, chunk: list[tuple[int, Event]]
    ) -> http.Answer:
        return await http.request(
            session,
            "POST",
            url,
            body=_encoder.encode(request_body([event for _, event in chunk])),
            headers=self._headers,
            limit=self._timeout,
            secrets=self._secrets,
            params=self._query,
        )


def event_of(kind: str, fields: dict[str, Any], now_ms: int | None = None) -> Event:
    """The GA4 event an action's fields make, or rules.Invalid."""
    client_id = fields.get("client_id")
    if not isinstance(client_id, str | int) or isinstance(client_id, bool) or client_id == "":
        raise rules.Invalid("no client_id")
    user_id = fields.get("user_id")
    user_id = str(user_id) if isinstance(user_id, str | int) and user_id != "" else None
    if kind == "custom_event":
        name = rules.event_name(fields.get("name"), lowercase=fields.get("lowercase") is not False)
    elif kind == "page_view":
        name = "page_view"
    else:
        name = kind
    raw = {key: value for key, value in fields.items() if key not in _OWN_FIELDS}
    extra = fields.get("params")
    if isinstance(extra, dict):
        raw.update(extra)
    if "currency" in raw and raw["currency"] is not None:
        raw["currency"] = rules.currency(raw["currency"])
    elif raw.get("value") is not None and kind != "custom_event":
        raise rules.Invalid("a value without a currency")
    event: dict[str, Any] = {"name": name, "params": rules.params(raw)}
    micros = timestamp_micros(fields.get("timestamp_micros"))
    # An event older than GA4 takes goes without its time, as Segment sends it: GA4 records
    # it when it arrives instead of dropping it without a word.
    too_old = (
        micros is not None
        and now_ms is not None
        and rules.backdated_too_far(micros // 1000, now_ms)
    )
    if micros is not None and not too_old:
        event["timestamp_micros"] = micros
    properties = fields.get("user_properties")
    made = rules.user_properties(properties) if isinstance(properties, dict) else {}
    client = (str(client_id), user_id, _encoder.encode(made).decode())
    made_event = Event(client, made, event, len(_encoder.encode(event)))
    if envelope_bytes(made_event) + made_event.size_bytes >= rules.MAX_BODY_BYTES:
        raise rules.Invalid(
            f"the event takes {made_event.size_bytes} bytes (GA4 takes 130 kB a request)"
        )
    return made_event


def envelope_bytes(event: Event) -> int:
    """The bytes of a request for `event`'s client around its events: the client and user
    ids and user properties count towards GA4's 130 kB too."""
    return len(_encoder.encode(request_body([event]))) - event.size_bytes


def timestamp_micros(value: Any) -> int | None:
    """An ISO-8601 time, or Unix seconds, milliseconds or microseconds, as microseconds."""
    if isinstance(value, str):
        try:
            return parse_ms(value.replace("Z", "+00:00")) * 1000
        except ValueError:
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value > 1e14:
            return int(value)
        return int(value * 1000) if value > 1e11 else int(value * 1_000_000)
    return None


def request_body(events: list[Event]) -> dict[str, Any]:
    """One client's events as one request (they share client, user and user properties)."""
    client_id, user_id, _ = events[0].client
    body: dict[str, Any] = {"client_id": client_id}
    if user_id is not None:
        body["user_id"] = user_id
    if events[0].user_properties:
        body["user_properties"] = events[0].user_properties
    body["events"] = [event.event for event in events]
    return body


def _by_client(made: list[tuple[int, Event]]) -> list[list[tuple[int, Event]]]:
    groups: dict[tuple[str, str | None, str], list[tuple[int, Event]]] = {}
    for pair in made:
        groups.setdefault(pair[1].client, []).append(pair)
    return list(groups.values())


def _chunks(group: list[tuple[int, Event]]) -> list[list[tuple[int, Event]]]:
    """At most 25 events a request, and bodies under 130 kB (one client's events: the bytes
    around them are the same for each request)."""
    chunks: list[list[tuple[int, Event]]] = []
    current: list[tuple[int, Event]] = []
    envelope = envelope_bytes(group[0][1]) if group else 0
    size = envelope
    for pair in group:
        grown = size + pair[1].size_bytes + (1 if current else 0)
        if current and (
            len(current) >= rules.MAX_EVENTS_PER_REQUEST or grown >= rules.MAX_BODY_BYTES
        ):
            chunks.append(current)
            current, grown = [], envelope + pair[1].size_bytes
        current.append(pair)
        size = grown
    if current:
        chunks.append(current)
    return chunks


def validation_messages(body: bytes, count: int) -> dict[int, str]:
    """Which events of a request the validation server refused, and why; a message that names
    no event refuses them all."""
    try:
        decoded = _decoder.decode(body)
    except msgspec.DecodeError:
        return {}
    messages = decoded.get("validationMessages") if isinstance(decoded, dict) else None
    refused: dict[int, str] = {}
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        text = f"{message.get('validationCode', 'INVALID')}: {message.get('description', '')}"
        found = _INDEX.search(f"{message.get('fieldPath', '')} {message.get('description', '')}")
        numbers = [int(found.group(1) or found.group(2))] if found else range(count)
        for number in numbers:
            if number < count:
                refused.setdefault(number, text.strip())
    return refused


def debug_url(destination: str, url: str) -> str:
    """The validation server beside a collection URL: `/mp/collect` -> `/debug/mp/collect`."""
    parts = urlsplit(url)
    if not parts.path.endswith("/mp/collect"):
        raise ConfigError(
            f"destination {destination!r}: validate needs an api_url ending in /mp/collect"
        )
    path = parts.path.removesuffix("/mp/collect") + "/debug/mp/collect"
    return urlunsplit(parts._replace(path=path))
