"""Segment's "test mapping": which of a destination's actions a message triggers, what each
maps, and the exact requests each would send, without sending anything.

The destination's own `send` runs against a session that records each request and answers
200 with an empty body, so what is shown is what delivery would send. Destinations that
publish to a broker or write a file show their mapped fields only (they are not called).
Credentials in headers and query parameters are shown as `***`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import aiohttp
import msgspec

from cdpd.destinations import actions, registry
from cdpd.destinations.settings import Destination
from cdpd.model.rows import MessageView

SENDS_HTTP = frozenset({"webhook", "mixpanel", "amplitude", "slack", "customerio", "ga4"})
_SECRET_NAME = re.compile(r"authorization|secret|token|key|signature|password", re.IGNORECASE)
_KEEP = frozenset({"idempotency-key"})  # a message id, not a credential
SAMPLE_MESSAGE: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "user-123",
    "anonymousId": "anon-456",
    "messageId": "test-message-1",
    "timestamp": "2026-01-01T12:00:00.000Z",
    "properties": {"order_id": "o-1", "revenue": 39.95, "currency": "USD"},
    "context": {"ip": "203.0.113.7", "library": {"name": "analytics.js", "version": "2.0.0"}},
}


class Request(msgspec.Struct, frozen=True):
    method: str
    url: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any  # the JSON sent, decoded; else the text


class ActionReport(msgspec.Struct, frozen=True):
    action: str
    kind: str
    subscribe: str
    triggered: bool
    fields: dict[str, Any] | None = None
    problem: str | None = None  # why it would not be sent (never retried)
    requests: list[Request] | None = None  # None: a destination that does not send HTTP
    refused: str | None = None  # the destination's own reason not to send it (never retried)


class Report(msgspec.Struct, frozen=True):
    destination: str
    type: str
    actions: list[ActionReport]


async def rehearse(config: Destination, message: dict[str, Any]) -> Report:
    """The report for one message; ConfigError when the destination cannot be built."""
    kind = registry.type_of(config)
    built = registry.actions_of(config)
    payload = msgspec.json.encode(message).decode()
    delivery = MessageView(1, str(message.get("messageId", "")), payload)
    by_action = {item.action: item for item in actions.prepare(built, [delivery])}
    sender = registry.build(config) if kind.name in SENDS_HTTP else None
    reports = []
    for action in built:
        item = by_action.get(action.name)
        if item is None:
            reports.append(ActionReport(action.name, action.kind, action.subscribe, False))
            continue
        fields = dict(item.fields)
        for name in item.whole_fields:
            fields[name] = msgspec.json.decode(actions.mapped_json(item, name))
        requests, refused = None, None
        if sender is not None and item.problem is None:
            recorder = _Recorder()
            results = await sender.send(cast(aiohttp.ClientSession, recorder), [item])
            requests = recorder.requests
            refused = next((r.error for r in results if r.invalid), None)
        reports.append(
            ActionReport(
                action.name,
                action.kind,
                action.subscribe,
                True,
                fields,
                item.problem,
                requests,
                refused,
            )
        )
    return Report(config.name, kind.name, reports)


class _Answer:
    status = 200
    headers: Mapping[str, str] = {}

    class content:  # stands for aiohttp's StreamReader attribute
        @staticmethod
        async def read(_size: int = -1) -> bytes:
            return b""


class _Recorder:
    """Enough of aiohttp.ClientSession for `http.request`: records, answers 200."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes = b"",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        **_options: Any,
    ) -> AsyncIterator[_Answer]:
        self.requests.append(
            Request(
                method, _masked_url(url), _masked(params or {}), _masked(headers or {}), _body(data)
            )
        )
        yield _Answer()


def _masked(values: Mapping[str, str]) -> dict[str, str]:
    return {
        key: "***" if _SECRET_NAME.search(key) and key.lower() not in _KEEP else str(value)
        for key, value in values.items()
    }


def _masked_url(url: str) -> str:
    return re.sub(
        r"([?&][^=&]*(?:secret|token|key|password)[^=&]*=)[^&]*", r"\1***", url, flags=re.I
    )


def _body(data: bytes | str) -> Any:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw.decode("utf-8", errors="replace")
