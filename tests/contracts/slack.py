"""Slack's incoming webhooks, as documented (api.slack.com/messaging/webhooks, "Handling
errors"): `POST /services/<T>/<B>/<token>` with a JSON body; `200 ok` as text, or a plain-text
error code: 400 `invalid_payload` (not JSON, or text not a string), 400 `no_text` (no text and
no blocks or attachments), 403 `action_prohibited`, 404 `channel_not_found`, 404 `no_service`
(unknown or revoked webhook), 410 `channel_is_archived`, 429 with Retry-After past about one
message a second (short bursts allowed), 500 `rollup_error`."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from tests.contracts.base import ContractServer

TOKEN_PATH = "/services/T0CDPD/B0CDPD/x0secret0token0x"


def _text(status: int, code: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=code, headers=headers, content_type="text/html")


class SlackWebhook(ContractServer):
    def __init__(
        self,
        *,
        channels: tuple[str, ...] = ("#general", "#alerts"),
        archived: tuple[str, ...] = ("#old",),
        prohibited: tuple[str, ...] = ("#announcements",),
        burst: int = 5,
        per_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.channels = set(channels)
        self.archived = set(archived)
        self.prohibited = set(prohibited)
        self._burst = burst
        self._per_s = per_s
        self._tokens = float(burst)
        self._last = time.monotonic()

    @property
    def webhook_url(self) -> str:
        return self.url + TOKEN_PATH

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [call.json for call in self.accepted]

    async def handle(self, request: web.Request, body: bytes) -> web.Response:
        if request.method != "POST" or request.path != TOKEN_PATH:
            return _text(404, "no_service")
        if not self._take():
            return _text(429, "rate_limited", {"Retry-After": "1"})
        if request.content_type != "application/json":  # else Slack reads a `payload=` form
            return _text(400, "invalid_payload")
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return _text(400, "invalid_payload")
        if not isinstance(payload, dict):
            return _text(400, "invalid_payload")
        text = payload.get("text")
        if text is not None and not isinstance(text, str):
            return _text(400, "invalid_payload")
        if not text and not payload.get("blocks") and not payload.get("attachments"):
            return _text(400, "no_text")
        for key in ("channel", "username", "icon_emoji", "icon_url"):
            if key in payload and not isinstance(payload[key], str):
                return _text(400, "invalid_payload")
        channel = payload.get("channel")
        if channel is not None:
            name = channel if channel.startswith(("#", "@")) else "#" + channel
            if name in self.archived:
                return _text(410, "channel_is_archived")
            if name in self.prohibited:
                return _text(403, "action_prohibited")
            if name not in self.channels and not name.startswith("@"):
                return _text(404, "channel_not_found")
        return _text(200, "ok")

    def _take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._per_s)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
