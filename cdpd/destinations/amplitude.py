"""The Amplitude destination: Segment's Amplitude (Actions) requests, batched to Amplitude's
limits, with Amplitude's per-event verdicts kept per item.

- Events (track, page, screen, Order Completed and its `Product Purchased` events) go to the
  HTTP V2 API, `POST {api_url}` with `{"api_key", "events", "options"}`: at most 2,000 events
  and 1 MB a request.
- Identifications go to the Identify API, `POST {identify_url}`, form-encoded `api_key` and
  `identification` (a JSON array, at most 100 a request).

Amplitude drops a whole request it answers 400, naming the events at fault in
`events_with_invalid_fields`, `events_with_missing_fields`, `events_with_invalid_id_lengths`
(a user_id or device_id shorter than min_id_length; not in Amplitude's reference, but read by
its own SDKs) and `silenced_events`. Those are dead, each with its reason, and the rest are
sent again at once without them, until Amplitude takes them or answers otherwise; so one bad
event never holds back or kills its batch. A 400 that names no event (a bad API key) fails the
request's events. A 413 (of either API) is split in halves and sent again; 429 (throttled
users or devices) and 5xx are retried, after `Retry-After` or, for a 429 without it, 30
seconds (Amplitude measures rates over 30 s). A 429 naming users or devices over their daily
quota parks their events until the quota resets (midnight UTC), without using up their retry
window; the request's other events are retried as after any 429.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from cdpd import __version__
from cdpd.clock import Clock, SystemClock
from cdpd.destinations import http
from cdpd.destinations.actions import Action, Prepared, worst
from cdpd.destinations.amplitude_actions import KINDS, PRESETS
from cdpd.destinations.base import Result, credentials_refused, required_secret
from cdpd.destinations.settings import AmplitudeDestination
from cdpd.model.timestamps import format_ms

__all__ = ["KINDS", "PRESETS", "Amplitude"]

EVENTS_MAX = 2000
EVENTS_MAX_BYTES = 1_000_000
IDENTIFY_MAX = 100
IDENTIFY_MAX_BYTES = 1_000_000
THROTTLED_WAIT_S = 30.0
# Fields that shape an event but are not sent as they are.
_CONTROL = frozenset(
    {"set_once", "set_always", "add", "products", "revenue_per_product", "library",
     "price", "quantity", "revenue", "productId", "revenueType"}
)  # fmt: skip
_encoder = msgspec.json.Encoder()

DAY_MS = 86_400_000
Entry = tuple[int, bytes]  # (item position, the event or identification as JSON)


class Amplitude:
    def __init__(
        self, config: AmplitudeDestination, actions: list[Action], clock: Clock | None = None
    ) -> None:
        self.name = config.name
        self._clock = clock or SystemClock()
        self.actions = actions
        key = required_secret(config.name, config.api_key, config.api_key_env, "api_key")
        self._key = key
        self._url = config.api_url
        self._identify_url = config.identify_url
        self._options = (
            {"min_id_length": config.min_id_length} if config.min_id_length is not None else None
        )
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._agent = f"cdpd/{__version__}"
        # {"api_key": "...", "events": [ ... ], "options": {...}} around the events.
        self._overhead = len(self._envelope(b"[]")) - 2

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        per_item: list[list[Result]] = [[] for _ in items]
        events: list[Entry] = []
        identifications: list[Entry] = []
        for index, item in enumerate(items):
            try:
                if item.kind == "identify":
                    identifications.append((index, _encoder.encode(identification(item.fields))))
                else:
                    shaped = purchase_events(item.fields) if item.kind == "purchase" else None
                    for event in shaped or [event_of(item.fields)]:
                        events.append((index, _encoder.encode(event)))
            except ValueError as exc:
                per_item[index].append(Result(None, f"{item.action}: {exc}", invalid=True))
        requests = [
            self._events(session, run)
            for run in http.chunks(events, EVENTS_MAX, EVENTS_MAX_BYTES, self._overhead)
        ]
        requests += [
            self._identify(session, run)
            for run in http.chunks(identifications, IDENTIFY_MAX, IDENTIFY_MAX_BYTES, 64)
        ]
        for outcome in await asyncio.gather(*requests):
            for index, result in outcome:
                per_item[index].append(result)
        return [worst(results) for results in per_item]

    def _envelope(self, events: bytes) -> bytes:
        head = b'{"api_key":' + _encoder.encode(self._key) + b',"events":'
        tail = (
            b"}"
            if self._options is None
            else b',"options":' + _encoder.encode(self._options) + b"}"
        )
        return head + events + tail

    async def _events(
        self, session: aiohttp.ClientSession, run: list[Entry]
    ) -> list[tuple[int, Result]]:
        """Send `run`; after a 400 naming events, those are dead and the rest go again."""
        outcome: list[tuple[int, Result]] = []
        pending = run
        while pending:
            body = self._envelope(http.json_array([record for _, record in pending]))
            headers = {"Content-Type": "application/json", "User-Agent": self._agent}
            answer = await http.request(
                session,
                "POST",
                self._url,
                body=body,
                headers=headers,
                limit=self._timeout,
                secrets=(self._key,),
            )
            if answer.ok:
                return outcome + [(index, Result(answer.status)) for index, _ in pending]
            if answer.status == 413 and len(pending) > 1:
                half = len(pending) // 2
                first, second = await asyncio.gather(
                    self._events(session, pending[:half]), self._events(session, pending[half:])
                )
                return outcome + first + second
            rejected = _rejected(answer.json()) if answer.status == 400 else {}
            # Only positions of this request count (so each resend is smaller, and this ends).
            rejected = {p: why for p, why in rejected.items() if 0 <= p < len(pending)}
            if not rejected:
                over_quota = _over_daily_quota(answer) if answer.status == 429 else None
                if over_quota is not None:
                    return outcome + self._park(answer, pending, over_quota)
                return outcome + [(index, self._failure(answer)) for index, _ in pending]
            summary = _summary(answer.json())
            for position, reason in rejected.items():
                error = f"HTTP 400: {summary}{reason}"[:500]
                outcome.append((pending[position][0], Result(400, error, invalid=True)))
            pending = [entry for position, entry in enumerate(pending) if position not in rejected]
        return outcome

    async def _identify(
        self, session: aiohttp.ClientSession, run: list[Entry]
    ) -> list[tuple[int, Result]]:
        identifications = http.json_array([record for _, record in run]).decode()
        body = (
            f"api_key={quote(self._key, safe='')}&identification={quote(identifications, safe='')}"
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": self._agent}
        answer = await http.request(
            session,
            "POST",
            self._identify_url,
            body=body.encode(),
            headers=headers,
            limit=self._timeout,
            secrets=(self._key,),
        )
        if answer.ok:
            return [(index, Result(answer.status)) for index, _ in run]
        if answer.status == 413 and len(run) > 1:
            # Too large for Amplitude: each half on its own (as for events).
            half = len(run) // 2
            first, second = await asyncio.gather(
                self._identify(session, run[:half]), self._identify(session, run[half:])
            )
            return first + second
        return [(index, self._failure(answer)) for index, _ in run]

    def _park(
        self, answer: http.Answer, pending: list[Entry], over_quota: set[str]
    ) -> list[tuple[int, Result]]:
        """A 429 naming users or devices over their daily quota: their events wait until the
        quota resets (midnight UTC); the request's other events are retried as after any 429."""
        reset_ms = next_utc_midnight_ms(self._clock.now_ms())
        parked = Result(
            429,
            f"HTTP 429: over Amplitude's daily quota; parked until {format_ms(reset_ms)}",
            parked_until_ms=reset_ms,
        )
        found = []
        for index, record in pending:
            ids = _ids_of(record)
            found.append((index, parked if ids & over_quota else self._failure(answer)))
        return found

    def _failure(self, answer: http.Answer) -> Result:
        failure = answer.failure()
        if answer.status in (400, 401, 403) and _refuses_the_key(answer):
            return credentials_refused(failure)
        if answer.status == 429 and failure.retry_after_s is None:
            return Result(429, failure.error, THROTTLED_WAIT_S)
        if answer.status == 413:  # an event too large on its own
            return Result(413, failure.error, invalid=True)
        return failure


def _over_daily_quota(answer: http.Answer) -> set[str] | None:
    """The user and device ids a 429 says are over their daily quota; None when it names none
    (a throttle of events per second, retried after Amplitude's 30-second window)."""
    said = answer.json()
    if not isinstance(said, dict):
        return None
    ids: set[str] = set()
    for key in ("exceeded_daily_quota_users", "exceeded_daily_quota_devices"):
        named = said.get(key)
        if isinstance(named, dict):
            ids |= {str(name) for name in named}
    return ids or None


def _ids_of(record: bytes) -> set[str]:
    event = msgspec.json.decode(record)
    return {str(event[key]) for key in ("user_id", "device_id") if event.get(key)}


def next_utc_midnight_ms(now_ms: int) -> int:
    """When Amplitude's daily quotas reset after `now_ms`."""
    return (now_ms // DAY_MS + 1) * DAY_MS


def _refuses_the_key(answer: http.Answer) -> bool:
    """Amplitude's answer to a wrong or missing API key: a 400 whose error names the key."""
    said = _summary(answer.json()) or answer.body[:200].decode("utf-8", errors="replace")
    return "api key" in said.lower() or "api_key" in said.lower()


def _rejected(answer: object) -> dict[int, str]:
    """The events a 400 names, by position, each with why."""
    if not isinstance(answer, dict):
        return {}
    reasons: dict[int, list[str]] = {}
    for key, what in (
        ("events_with_invalid_fields", "invalid"),
        ("events_with_missing_fields", "missing"),
        ("events_with_invalid_id_lengths", "too short:"),
    ):
        fields = answer.get(key)
        if isinstance(fields, dict):
            for field, positions in fields.items():
                for position in positions if isinstance(positions, list) else []:
                    if isinstance(position, int):
                        reasons.setdefault(position, []).append(f"{what} {field}")
    silenced = answer.get("silenced_events")
    for position in silenced if isinstance(silenced, list) else []:
        if isinstance(position, int):
            reasons.setdefault(position, []).append("silenced (its device is silenced)")
    return {position: ", ".join(why) for position, why in reasons.items()}


def _summary(answer: object) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    return f"{str(error)[:200]}: " if error else ""


def event_of(fields: dict[str, Any]) -> dict[str, Any]:
    """An HTTP V2 event from Segment's logEventV2 fields (ValueError: it cannot be sent)."""
    event = {k: v for k, v in fields.items() if k not in _CONTROL and v is not None}
    if not event.get("user_id") and not event.get("device_id"):
        raise ValueError("Amplitude needs a user_id or a device_id")
    platform = event.get("platform")
    if isinstance(platform, str):
        event["platform"] = _platform(platform)
    elif fields.get("library") == "analytics.js":
        event["platform"] = "Web"
    for key in ("time", "session_id"):
        if key in event:
            event[key] = http.time_ms(event[key])
    user_properties = dict(event.get("user_properties") or {})
    for name, field in (("$setOnce", "set_once"), ("$set", "set_always"), ("$add", "add")):
        value = fields.get(field)
        if isinstance(value, dict) and any(v not in (None, "") for v in value.values()):
            user_properties[name] = value
    if user_properties:
        event["user_properties"] = user_properties
    if fields.get("library") is not None:
        event["library"] = fields["library"]
    return event


def purchase_events(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """The order event and a `Product Purchased` event per product (Segment's logPurchase):
    revenue once on the order, or on each product with `revenue_per_product`."""
    order = event_of(fields)
    products = [p for p in fields.get("products") or [] if isinstance(p, dict)]
    per_product = bool(fields.get("revenue_per_product")) and bool(products)
    library = order.pop("library", None)
    events = [{**order, **({} if per_product else revenue_of(fields))}]
    for product in products:
        event = {**order, **(revenue_of(product) if per_product else {})}
        event["event_properties"] = product
        event["event_type"] = "Product Purchased"
        if "insert_id" in order:
            event["insert_id"] = f"{order['insert_id']}-{len(events) + 1}"
        events.append(event)
    if library is not None:
        for event in events:
            event["library"] = library
    return events


def revenue_of(fields: dict[str, Any]) -> dict[str, Any]:
    revenue = fields.get("revenue")
    quantity, price = fields.get("quantity"), fields.get("price")
    numbers = (int, float)
    if isinstance(quantity, numbers) and isinstance(price, numbers):
        revenue = quantity * price
    if not revenue:
        return {}
    shaped = {
        "revenue": revenue,
        "revenueType": fields.get("revenueType") or "Purchase",
        "quantity": round(quantity) if isinstance(quantity, numbers) else None,
        "price": price,
        "productId": fields.get("productId"),
    }
    return {k: v for k, v in shaped.items() if v is not None}


def identification(fields: dict[str, Any]) -> dict[str, Any]:
    """An Identify API identification (ValueError: it cannot be sent)."""
    shaped = {k: v for k, v in fields.items() if v is not None}
    if not shaped.get("user_id") and not shaped.get("device_id"):
        raise ValueError("Amplitude needs a user_id or a device_id")
    if isinstance(shaped.get("platform"), str):
        shaped["platform"] = _platform(shaped["platform"])
    return shaped


def _platform(platform: str) -> str:
    lowered = platform.lower()
    return (
        platform
        if lowered not in ("ios", "android")
        else {"ios": "iOS", "android": "Android"}[lowered]
    )
