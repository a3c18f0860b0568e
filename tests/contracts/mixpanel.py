"""Mixpanel's ingestion API as its documentation gives it (docs.mixpanel.com: Import Events,
Track Events, Profile Set, Group Set, the troubleshooting pages for 400/401/413/429).

- `POST /import[?strict=1][&project_id=P]`: Basic auth with the project token or project
  secret as user name (empty password), or a service account with `project_id`; a JSON array
  of at most 2,000 events and `max_import_bytes` (2 MB); with strict=1 each event needs an
  `event`, `properties.time` (not over an hour ahead), `properties.distinct_id` (not a
  placeholder such as "null") and `properties.$insert_id` (1-36 letters, digits, dashes).
  A batch with invalid events is a 400 naming them in `failed_records`; the others are kept.
- `POST /track`, `/engage`, `/groups` `?verbose=1`: form `data=<JSON object or array>`, at most
  50 records, each carrying the project token; `{"status": 1, "error": null}` or status 0;
  a 413 over `max_form_bytes`.

Events are kept once per $insert_id, as Mixpanel deduplicates them.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any
from urllib.parse import parse_qs

import msgspec
from aiohttp import web

from tests.contracts.base import ContractServer, Handler, json_response

PLACEHOLDER_IDS = {
    "", "anon", "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown",
    "00000000-0000-0000-0000-000000000000", "0", "-1", "[]", "{}",
}  # fmt: skip
INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
MIN_TIME_MS = 31_536_000_000  # 1971-01-01


class MixpanelContract(ContractServer):
    def __init__(
        self,
        *,
        token: str = "mp_token",
        api_secret: str = "mp_secret",
        service_account: tuple[str, str, str] | None = None,  # (username, secret, project_id)
        max_import_bytes: int = 2 * 1024 * 1024,
        max_form_bytes: int = 1024 * 1024,
    ) -> None:
        super().__init__()
        self.token = token
        self.api_secret = api_secret
        self.service_account = service_account
        self.max_import_bytes = max_import_bytes
        self.max_form_bytes = max_form_bytes
        self.events: dict[str, dict[str, Any]] = {}  # by $insert_id
        self.profile_updates: list[dict[str, Any]] = []
        self.group_updates: list[dict[str, Any]] = []
        self.tracked: list[dict[str, Any]] = []

    def routes(self) -> dict[str, Handler]:
        return {
            "/import": self._import,
            "/track": self._form(self.tracked, lambda r: r.get("properties", {}).get("token")),
            "/engage": self._form(self.profile_updates, lambda r: r.get("$token")),
            "/groups": self._form(self.group_updates, lambda r: r.get("$token")),
        }

    async def _import(self, request: web.Request, body: bytes) -> web.Response:
        if not self._authorised(request):
            return json_response(
                401, {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
            )
        if request.content_type not in ("application/json", "application/x-ndjson"):
            return _bad_request("Content-Type must be application/json or application/x-ndjson")
        if len(body) > self.max_import_bytes:
            return json_response(
                413,
                {"code": 413, "error": "request body too large", "status": "Payload Too Large"},
            )
        try:
            events = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return _bad_request("unable to parse the request body as JSON")
        if not isinstance(events, list) or not events:
            return _bad_request("expected a JSON array of events")
        if len(events) > 2000:
            return _bad_request("too many events in a batch, at most 2000 are allowed")
        strict = request.query.get("strict") == "1"
        failed = []
        for index, event in enumerate(events):
            problem = _problem(event) if strict else None
            if problem is not None:
                field, message = problem
                insert_id = _dig(event, "properties", "$insert_id")
                failed.append(
                    {"index": index, "insert_id": insert_id, "field": field, "message": message}
                )
            elif isinstance(event, dict):
                self.events[str(_dig(event, "properties", "$insert_id"))] = event
        imported = len(events) - len(failed)
        if failed:
            return json_response(
                400,
                {
                    "code": 400,
                    "error": "some data points in the request failed validation",
                    "status": "Bad Request",
                    "num_records_imported": imported,
                    "failed_records": failed,
                },
            )
        return json_response(200, {"code": 200, "num_records_imported": imported, "status": "OK"})

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        project_id = request.query.get("project_id")
        if project_id is not None:
            return self.service_account == (user, password, project_id)
        return password == "" and user in (self.token, self.api_secret)

    def _form(self, store: list[dict[str, Any]], token_of: Any) -> Handler:
        async def handle(request: web.Request, body: bytes) -> web.Response:
            form = parse_qs(body.decode())
            if request.headers.get("Content-Type") != "application/x-www-form-urlencoded":
                return _verbose(400, "expected application/x-www-form-urlencoded")
            if len(body) > self.max_form_bytes:
                return _verbose(413, "request body too large")
            try:
                records = msgspec.json.decode(form["data"][0])
            except (KeyError, msgspec.DecodeError):
                return _verbose(400, "data, no data in the request")
            records = records if isinstance(records, list) else [records]
            if len(records) > 50:
                return _verbose(400, "too many records in a batch, at most 50 are allowed")
            if any(not isinstance(r, dict) or token_of(r) != self.token for r in records):
                return (
                    _verbose(200, "token, missing or empty")
                    if request.query.get("verbose") == "1"
                    else web.Response(text="0")
                )
            store.extend(records)
            if request.query.get("verbose") == "1":
                return json_response(200, {"status": 1, "error": None})
            return web.Response(text="1")

        return handle


def _problem(event: Any) -> tuple[str, str] | None:
    if not isinstance(event, dict):
        return "", "event must be a JSON object"
    if not isinstance(event.get("event"), str) or not event["event"]:
        return "event", "'event' must be a non-empty string"
    properties = event.get("properties")
    if not isinstance(properties, dict):
        return "properties", "'properties' must be an object"
    when = properties.get("time")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        return "properties.time", "'properties.time' is invalid: must be a number"
    when_ms = when if when > 10**11 else when * 1000
    if when_ms < MIN_TIME_MS or when_ms > time.time() * 1000 + 3600_000:
        return "properties.time", "'properties.time' is invalid: out of range"
    distinct_id = properties.get("distinct_id")
    if not isinstance(distinct_id, str):
        return "properties.distinct_id", "'properties.distinct_id' must be a string"
    if distinct_id.lower() in PLACEHOLDER_IDS - {""}:
        return "properties.distinct_id", f"'properties.distinct_id' is invalid: {distinct_id!r}"
    insert_id = properties.get("$insert_id")
    if not isinstance(insert_id, str) or not INSERT_ID.fullmatch(insert_id):
        return (
            "properties.$insert_id",
            "'properties.$insert_id' must be 1-36 alphanumeric characters or '-'",
        )
    return None


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _bad_request(error: str) -> web.Response:
    return json_response(400, {"code": 400, "error": error, "status": "Bad Request"})


def _verbose(status: int, error: str) -> web.Response:
    return json_response(status, {"status": 0, "error": error})
