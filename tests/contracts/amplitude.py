"""Amplitude's HTTP V2 and Identify APIs as their documentation gives them (amplitude.com/docs:
HTTP V2 API, Batch and retry HTTP V2 API requests, Identify API, common API error codes).

- `POST /2/httpapi`, `Content-Type: application/json` (else a 400), JSON `{"api_key",
  "events", "options"}`: over 1 MB or 2,000 events is a 413; a missing or wrong api_key a 400
  naming no event; each event needs `event_type` and a `user_id` or `device_id` of at least
  `options.min_id_length` (5) characters, and a `time` that is a number. Any bad event makes
  the request a 400 naming it in `events_with_invalid_fields` / `events_with_missing_fields` /
  `events_with_invalid_id_lengths` (an id too short: a field Amplitude's own SDKs read,
  though its reference leaves it out) / `silenced_events`, and nothing of that request is
  kept. An event of a user over the daily quota makes it a 429 with
  `exceeded_daily_quota_users`, nothing kept (the quota resets at midnight UTC). An event of a
  throttled user makes it a 429 with `throttled_users` and `throttled_events`, nothing kept.
  Otherwise 200 with `events_ingested`.
- `POST /identify`, form `api_key` and `identification` (an object or an array, each with a
  `user_id` or `device_id`): 200 `success`, or a 400 with a text reason; a 413 over
  `max_identify_bytes` (Amplitude documents no limit: a test sets one).

Events are kept once per insert_id, as Amplitude deduplicates them.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import msgspec
from aiohttp import web

from tests.contracts.base import ContractServer, Handler, json_response


class AmplitudeContract(ContractServer):
    def __init__(
        self,
        *,
        api_key: str = "amp_key",
        max_bytes: int = 1_000_000,
        max_identify_bytes: int = 1_000_000,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.max_bytes = max_bytes
        self.max_identify_bytes = max_identify_bytes
        self.silenced_devices: set[str] = set()
        self.throttled_users: set[str] = set()
        # Users over their daily event quota: a 429 naming them in exceeded_daily_quota_users.
        self.over_quota_users: set[str] = set()
        self.events: dict[str, dict[str, Any]] = {}  # by insert_id
        self.identifications: list[dict[str, Any]] = []

    def routes(self) -> dict[str, Handler]:
        return {"/2/httpapi": self._events, "/identify": self._identify}

    async def _events(self, request: web.Request, body: bytes) -> web.Response:
        if request.content_type != "application/json":
            return json_response(400, {"code": 400, "error": "Invalid Content-Type header"})
        if len(body) > self.max_bytes:
            return json_response(413, {"code": 413, "error": "Payload too large"})
        try:
            upload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return json_response(400, {"code": 400, "error": "Invalid JSON request body"})
        if not isinstance(upload, dict) or "api_key" not in upload:
            return _missing("api_key")
        if upload["api_key"] != self.api_key:
            return json_response(
                400, {"code": 400, "error": f"Invalid API key: {upload['api_key']}"}
            )
        events = upload.get("events")
        if not isinstance(events, list) or not events:
            return _missing("events")
        if len(events) > 2000:
            return json_response(413, {"code": 413, "error": "Payload too large"})
        min_id_length = (upload.get("options") or {}).get("min_id_length", 5)
        invalid: dict[str, list[int]] = {}
        missing: dict[str, list[int]] = {}
        short: dict[str, list[int]] = {}
        silenced: list[int] = []
        throttled: list[int] = []
        for index, event in enumerate(events):
            for kind, field in _problems(event, min_id_length):
                found = {"invalid": invalid, "missing": missing, "short": short}[kind]
                found.setdefault(field, []).append(index)
            if isinstance(event, dict) and event.get("device_id") in self.silenced_devices:
                silenced.append(index)
            if isinstance(event, dict) and event.get("user_id") in self.throttled_users:
                throttled.append(index)
        if invalid or missing or short or silenced:
            answer: dict[str, Any] = {"code": 400}
            answer["error"] = (
                "Request missing required field"
                if missing
                else "Invalid field values on some events"
                if invalid
                else "Invalid id length for user_id or device_id"
            )
            if short:
                answer["events_with_invalid_id_lengths"] = short
            if invalid:
                answer["events_with_invalid_fields"] = invalid
            if missing:
                answer["events_with_missing_fields"] = missing
            if silenced:
                answer["silenced_devices"] = sorted(self.silenced_devices)
                answer["silenced_events"] = silenced
            return json_response(400, answer)
        over_quota = sorted(
            {
                e["user_id"]
                for e in events
                if isinstance(e, dict) and e.get("user_id") in self.over_quota_users
            }
        )
        if over_quota:
            return json_response(
                429,
                {
                    "code": 429,
                    "error": "Too many requests for some devices and users",
                    "eps_threshold": 30,
                    "throttled_devices": {},
                    "throttled_users": {},
                    "throttled_events": [],
                    "exceeded_daily_quota_users": {user: 500_001 for user in over_quota},
                    "exceeded_daily_quota_devices": {},
                },
            )
        if throttled:
            users = {events[i]["user_id"]: 0 for i in throttled}
            for i in throttled:
                users[events[i]["user_id"]] += 1
            return json_response(
                429,
                {
                    "code": 429,
                    "error": "Too many requests for some devices and users",
                    "eps_threshold": 30,
                    "throttled_devices": {},
                    "throttled_users": users,
                    "throttled_events": throttled,
                },
            )
        for event in events:
            self.events.setdefault(str(event.get("insert_id", id(event))), event)
        return json_response(
            200,
            {
                "code": 200,
                "events_ingested": len(events),
                "payload_size_bytes": len(body),
                "server_upload_time": int(time.time() * 1000),
            },
        )

    async def _identify(self, request: web.Request, body: bytes) -> web.Response:
        if request.headers.get("Content-Type") != "application/x-www-form-urlencoded":
            return web.Response(status=400, text="expected a form")
        if len(body) > self.max_identify_bytes:
            return web.Response(status=413, text="Payload too large")
        form = parse_qs(body.decode())
        if form.get("api_key") != [self.api_key]:
            return web.Response(status=400, text="invalid api_key")
        try:
            identifications = msgspec.json.decode(form["identification"][0])
        except (KeyError, msgspec.DecodeError):
            return web.Response(status=400, text="missing identification")
        if isinstance(identifications, dict):
            identifications = [identifications]
        for identification in identifications:
            if not isinstance(identification, dict) or not (
                identification.get("user_id") or identification.get("device_id")
            ):
                return web.Response(status=400, text="user_id or device_id is required")
        self.identifications += identifications
        return web.Response(text="success")


def _problems(event: Any, min_id_length: int) -> list[tuple[str, str]]:
    if not isinstance(event, dict):
        return [("invalid", "event")]
    problems = []
    if not isinstance(event.get("event_type"), str) or not event["event_type"]:
        problems.append(("missing", "event_type"))
    ids = [key for key in ("user_id", "device_id") if event.get(key) is not None]
    if not ids:
        problems.append(("missing", "user_id"))
    for key in ids:
        if not isinstance(event[key], str):
            problems.append(("invalid", key))
        elif len(event[key]) < min_id_length:
            problems.append(("short", key))
    if "time" in event and (not isinstance(event["time"], int) or isinstance(event["time"], bool)):
        problems.append(("invalid", "time"))
    return problems


def _missing(field: str) -> web.Response:
    return json_response(
        400, {"code": 400, "error": "Request missing required field", "missing_field": field}
    )
