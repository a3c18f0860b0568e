"""The Mixpanel destination: Segment's Mixpanel (Actions) requests, batched to Mixpanel's
limits, with Mixpanel's per-event verdicts kept per item.

- Events (track, page, screen, Order Completed and its `Product Purchased` events) go to
  `POST {api_url}/import?strict=1` as a JSON array, at most 2,000 events and 2 MB a request,
  with Basic auth: a service account (`username:secret`, and `project_id` in the query), else
  the project secret, else the project token, as the user name with an empty password.
- Profile updates go to `/engage`, group updates to `/groups`, `$identify` and
  `$create_alias` to `/track`: form-encoded `data=<JSON array>` (at most 50 a request) with
  the project token inside each record, and `verbose=1` so that Mixpanel says what failed.

Answers: /import's 400 with `failed_records` fails only the events it names (each with its
field and message; the rest were ingested); a 413 (of any endpoint) is split in halves and
sent again; 429 and 5xx are retried (Retry-After honoured); other statuses (401 and 403: bad
credentials) fail every event of the request. A verbose answer `{"status": 0, "error": ...}`
fails its request.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from cdpd import __version__
from cdpd.destinations import http
from cdpd.destinations.actions import Action, Prepared, worst
from cdpd.destinations.base import Result, credentials_refused, required_secret, secret
from cdpd.destinations.mixpanel_actions import KINDS, PRESETS
from cdpd.destinations.settings import MixpanelDestination
from cdpd.settings import ConfigError

__all__ = ["KINDS", "PRESETS", "Mixpanel"]

IMPORT_MAX_EVENTS = 2000
IMPORT_MAX_BYTES = 2 * 1024 * 1024
FORM_MAX_RECORDS = 50  # /track, /engage, /groups
FORM_MAX_BYTES = 1024 * 1024
# Properties Mixpanel reserves; an event's own properties never overwrite them (Segment's list).
RESERVED = frozenset(
    {"time", "id", "$anon_id", "distinct_id", "$group_id", "$insert_id", "$user_id"}
)
# Order-level keys a `Product Purchased` event does not repeat (Segment's list).
ORDER_KEYS = frozenset(
    {"affiliation", "subtotal", "total", "revenue", "shipping", "tax", "discount", "coupon",
     "currency", "order_number", "products"}
)  # fmt: skip
TRAITS_RESERVED = {
    "created": "$created", "email": "$email", "firstName": "$first_name",
    "lastName": "$last_name", "name": "$name", "username": "$username", "phone": "$phone",
}  # fmt: skip
_INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
_encoder = msgspec.json.Encoder()

Record = tuple[str, dict[str, Any]]  # (endpoint, the JSON record)


class Mixpanel:
    def __init__(self, config: MixpanelDestination, actions: list[Action]) -> None:
        self.name = config.name
        self.actions = actions
        token = required_secret(
            config.name, config.project_token, config.project_token_env, "project_token"
        )
        self._token = token
        self._base = config.api_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        query = f"?strict={1 if config.strict else 0}"
        user = secret(config.name, config.api_secret, config.api_secret_env, "api_secret") or token
        password = ""
        if config.service_account_username:
            account = secret(
                config.name,
                config.service_account_secret,
                config.service_account_secret_env,
                "service_account_secret",
            )
            if not account or not config.project_id:
                raise ConfigError(
                    f"destination {config.name!r}: a service account needs "
                    "service_account_secret (or _env) and project_id"
                )
            user, password = config.service_account_username, account
            query += f"&project_id={quote(config.project_id)}"
        self._import_url = f"{self._base}/import{query}"
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        # What error texts never show (the service account's name is no secret).
        self._secrets = (token, password or user, auth)
        self._import_headers = {
            "Content-Type": "application/json",
            "Authorization": f"Basic {auth}",
            "User-Agent": f"cdpd/{__version__}",
        }
        self._form_headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": f"cdpd/{__version__}",
        }

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        per_item: list[list[Result]] = [[] for _ in items]
        by_endpoint: dict[str, list[tuple[int, bytes]]] = {}
        for index, item in enumerate(items):
            try:
                records = self.records(item)
            except ValueError as exc:
                per_item[index].append(Result(None, f"{item.action}: {exc}", invalid=True))
                continue
            for endpoint, record in records:
                by_endpoint.setdefault(endpoint, []).append((index, _encoder.encode(record)))
        requests = []
        for endpoint, encoded in by_endpoint.items():
            if endpoint == "import":
                runs = http.chunks(encoded, IMPORT_MAX_EVENTS, IMPORT_MAX_BYTES, 0)
                requests += [self._import(session, run) for run in runs]
            else:
                runs = http.chunks(encoded, FORM_MAX_RECORDS, FORM_MAX_BYTES, len("data="))
                requests += [self._form(session, endpoint, run) for run in runs]
        for run_results in await asyncio.gather(*requests):
            for index, result in run_results:
                per_item[index].append(result)
        return [worst(results) for results in per_item]

    def records(self, item: Prepared) -> list[Record]:
        """What one item sends, where (ValueError: it cannot be sent)."""
        fields = item.fields
        if item.kind in ("track", "purchase") and fields.get("insert_id") in (None, ""):
            # Mixpanel deduplicates by $insert_id: never one shared by unrelated events.
            fields = {**fields, "insert_id": item.delivery.message_id}
        if item.kind == "track":
            return [("import", {"event": fields["event"], "properties": event_properties(fields)})]
        if item.kind == "purchase":
            return [("import", event) for event in purchase_events(fields)]
        if item.kind == "identify":
            return self._identify(fields)
        if item.kind == "group":
            return [("groups", self._group(fields))]
        return [
            (
                "track",
                {
                    "event": "$create_alias",
                    "properties": {
                        "distinct_id": fields["distinct_id"],
                        "alias": fields["alias"],
                        "token": self._token,
                    },
                },
            )
        ]

    def _identify(self, fields: dict[str, Any]) -> list[Record]:
        records: list[Record] = []
        user_id, anonymous_id = fields.get("user_id"), fields.get("anonymous_id")
        if user_id and anonymous_id:
            properties = {"$identified_id": user_id, "$anon_id": anonymous_id, "token": self._token}
            records.append(("track", {"event": "$identify", "properties": properties}))
        traits = fields.get("traits")
        if isinstance(traits, dict) and traits:
            update = {"$token": self._token, "$distinct_id": user_id or anonymous_id}
            if fields.get("ip") is not None:
                update["$ip"] = fields["ip"]
            update["$set"] = profile_traits(traits)
            records.append(("engage", update))
        return records

    def _group(self, fields: dict[str, Any]) -> dict[str, Any]:
        traits = fields.get("traits")
        if not isinstance(traits, dict):
            raise ValueError("a group update needs traits")
        key = fields.get("group_key") or "$group_id"
        return {
            "$token": self._token,
            "$group_key": key,
            "$group_id": traits.get(key) or fields["group_id"],
            "$set": traits,
        }

    async def _import(
        self, session: aiohttp.ClientSession, run: list[tuple[int, bytes]]
    ) -> list[tuple[int, Result]]:
        body = http.json_array([record for _, record in run])
        answer = await http.request(
            session,
            "POST",
            self._import_url,
            body=body,
            headers=self._import_headers,
            limit=self._timeout,
            secrets=self._secrets,
        )
        if answer.ok:
            return [(index, Result(answer.status)) for index, _ in run]
        if answer.status == 413 and len(run) > 1:
            # Too large for Mixpanel: each half on its own.
            half = len(run) // 2
            first, second = await asyncio.gather(
                self._import(session, run[:half]), self._import(session, run[half:])
            )
            return first + second
        if answer.status == 400:
            failed = _failed_records(answer.json())
            if failed is not None:
                return [
                    (index, failed.get(position) or Result(200))
                    for position, (index, _) in enumerate(run)
                ]
        failure = answer.failure()
        if answer.status == 413:
            failure = Result(413, failure.error, invalid=True)
        return [(index, failure) for index, _ in run]

    async def _form(
        self, session: aiohttp.ClientSession, endpoint: str, run: list[tuple[int, bytes]]
    ) -> list[tuple[int, Result]]:
        data = http.json_array([record for _, record in run]).decode()
        body = ("data=" + quote(data, safe="")).encode()
        url = f"{self._base}/{endpoint}?verbose=1"
        answer = await http.request(
            session,
            "POST",
            url,
            body=body,
            headers=self._form_headers,
            limit=self._timeout,
            secrets=self._secrets,
        )
        if answer.status == 413 and len(run) > 1:
            # Too large for Mixpanel: each half on its own (as for /import).
            half = len(run) // 2
            first, second = await asyncio.gather(
                self._form(session, endpoint, run[:half]),
                self._form(session, endpoint, run[half:]),
            )
            return first + second
        result = Result(answer.status)
        if not answer.ok:
            result = answer.failure()
        else:
            verdict = answer.json()
            if isinstance(verdict, dict) and verdict.get("status") != 1:
                said = f"Mixpanel /{endpoint}: {verdict.get('error') or 'rejected'}"
                error = http.redact(said, self._secrets)  # scrubbed, then cut
                result = Result(answer.status, error, invalid=True)
                if "token" in str(verdict.get("error")).lower():  # the project token refused
                    result = credentials_refused(result)
        return [(index, result) for index, _ in run]


def _failed_records(answer: object) -> dict[int, Result] | None:
    """/import's 400 with strict=1: the events it rejected, by position; None if it names none."""
    if not isinstance(answer, dict) or not isinstance(answer.get("failed_records"), list):
        return None
    failed: dict[int, Result] = {}
    for record in answer["failed_records"]:
        if isinstance(record, dict) and isinstance(record.get("index"), int):
            reason = f"{record.get('field', '')}: {record.get('message', '')}"[:300]
            failed[record["index"]] = Result(400, f"HTTP 400: {reason}", invalid=True)
    return failed or None


def event_properties(fields: dict[str, Any]) -> dict[str, Any]:
    """The properties of a Mixpanel event from Segment's trackEvent fields."""
    distinct_id = fields.get("distinct_id")
    user_agent = fields.get("user_agent")
    browser = browser_of(user_agent) if isinstance(user_agent, str) else None
    utm = fields.get("utm_properties") or {}
    library = fields.get("library_name")
    properties = {
        "time": http.time_ms(fields.get("time")),
        "ip": fields.get("ip"),
        "id": distinct_id,
        "$anon_id": fields.get("anonymous_id"),
        "distinct_id": distinct_id,
        "$app_build_number": fields.get("app_build"),
        "$app_version_string": fields.get("app_version"),
        "$app_namespace": fields.get("app_namespace"),
        "$app_name": fields.get("app_name"),
        "$browser": browser,
        "$browser_version": browser_version(user_agent, browser) if browser else None,
        "$bluetooth_enabled": fields.get("bluetooth"),
        "$cellular_enabled": fields.get("cellular"),
        "$carrier": fields.get("carrier"),
        "$current_url": fields.get("url"),
        "$device": fields.get("device_name"),
        "$device_id": fields.get("device_id"),
        "$device_type": fields.get("device_type"),
        "$device_name": fields.get("device_name"),
        "$group_id": fields.get("group_id"),
        "$identified_id": fields.get("user_id"),
        "$insert_id": insert_id(fields.get("insert_id")),
        "$ios_ifa": fields.get("idfa"),
        "$lib_version": fields.get("library_version"),
        "$locale": fields.get("language"),
        "$manufacturer": fields.get("device_manufacturer"),
        "$model": fields.get("device_model"),
        "$os": fields.get("os_name"),
        "$os_version": fields.get("os_version"),
        "$referrer": fields.get("referrer"),
        "$screen_height": fields.get("screen_height"),
        "$screen_width": fields.get("screen_width"),
        "$screen_density": fields.get("screen_density"),
        "$source": "cdpd",
        "$user_id": fields.get("user_id"),
        "$wifi_enabled": fields.get("wifi"),
        "mp_country_code": fields.get("country"),
        "mp_lib": f"cdpd: {library}" if library else None,
    }
    if isinstance(utm, dict):
        properties.update({key: utm.get(key) for key in sorted(utm)})
    properties = {key: value for key, value in properties.items() if value is not None}
    own = fields.get("event_properties")
    if isinstance(own, dict):
        properties.update({k: v for k, v in own.items() if k not in RESERVED})
    return properties


def purchase_events(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """The order event, then (by default) a `Product Purchased` event per product, each a
    millisecond earlier than the one before and with an insert id derived from the order's."""
    order = {"event": fields["event"], "properties": event_properties(fields)}
    products = fields.get("products")
    if not fields.get("purchase_event_per_product") or not isinstance(products, list):
        return [order]
    shared = {k: v for k, v in order["properties"].items() if k not in ORDER_KEYS}
    events = [order]
    for position, product in enumerate(products):
        properties = dict(shared)
        properties["$insert_id"] = _derived_id(f"{shared['$insert_id']}/{position}")
        properties["time"] = shared["time"] - position - 1
        if isinstance(product, dict):
            properties.update(product)
        events.append({"event": "Product Purchased", "properties": properties})
    return events


def profile_traits(traits: dict[str, Any]) -> dict[str, Any]:
    """Segment's traits with Mixpanel's reserved profile properties renamed ($email...)."""
    kept = {key: value for key, value in traits.items() if key not in TRAITS_RESERVED}
    for trait, reserved in TRAITS_RESERVED.items():
        if traits.get(trait) is not None:
            kept[reserved] = traits[trait]
    return kept


def insert_id(value: Any) -> str:
    """Mixpanel takes 1-36 letters, digits and dashes; anything else becomes a UUID derived
    from it, the same on every retry."""
    text = "" if value is None else str(value)
    return text if _INSERT_ID.fullmatch(text) else _derived_id(text)


def _derived_id(text: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "cdpd:" + text))


_BROWSERS: tuple[tuple[str, str], ...] = (
    (" OPR/", "Opera"), ("SamsungBrowser/", "Samsung Internet"), ("Edg", "Microsoft Edge"),
    ("FBIOS", "Facebook Mobile"), ("Chrome", "Chrome"), ("CriOS", "Chrome iOS"),
    ("FxiOS", "Firefox iOS"), ("Safari", "Safari"), ("Firefox", "Firefox"),
)  # fmt: skip
_VERSIONS = {
    "Opera": r"OPR/(\d+(\.\d+)+)", "Samsung Internet": r"SamsungBrowser/(\d+(\.\d+)+)",
    "Microsoft Edge": r"Edge?/(\d+(\.\d+)+)", "Chrome": r"Chrome/(\d+(\.\d+)+)",
    "Chrome iOS": r"CriOS/(\d+(\.\d+)+)", "Firefox iOS": r"FxiOS/(\d+(\.\d+)+)",
    "Safari": r"Version/(\d+(\.\d+)+)", "Mobile Safari": r"Version/(\d+(\.\d+)+)",
    "Firefox": r"Firefox/(\d+(\.\d+)+)",
}  # fmt: skip


def browser_of(user_agent: str) -> str | None:
    """$browser as Mixpanel's libraries name it (the common browsers)."""
    for marker, name in _BROWSERS:
        if marker in user_agent:
            if name == "Safari" and "iPhone" in user_agent:
                return "Mobile Safari"
            return name
    return None


def browser_version(user_agent: Any, browser: str) -> str | None:
    pattern = _VERSIONS.get(browser)
    found = re.search(pattern, user_agent) if pattern and isinstance(user_agent, str) else None
    return found.group(1) if found else None
