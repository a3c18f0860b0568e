"""The webhook destination: each message (or the fields an action maps) as JSON, one per
request, or up to `batch_size` per request as `{"batch": [...]}`, optionally signed.

Headers: `Content-Type: application/json`, `User-Agent: cdpd/<version>`, the configured
headers, `Idempotency-Key` (for a single message its messageId, also sent as `X-Cdpd-Message-Id`;
for a batch the SHA-256 of its messageIds, so a resent batch has the same key, and the header
stays short however large the batch). Redirects are not followed. With
a shared secret: `X-Cdpd-Timestamp` (Unix seconds) and `X-Cdpd-Signature: v1=<hex>`, the
HMAC-SHA256 of `"<timestamp>." + body` (the exact bytes sent) with the secret as key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Sequence

import aiohttp

from cdpd import __version__
from cdpd.destinations import http
from cdpd.destinations.actions import (
    EVERY_TYPE,
    WHOLE_MESSAGE,
    Action,
    ActionKind,
    Field,
    Prepared,
    Preset,
    mapped_json,
)
from cdpd.destinations.base import Result, header_problem, secret
from cdpd.destinations.settings import WebhookDestination
from cdpd.destinations.webhook_secrets import webhook_secrets

KINDS = {
    "send": ActionKind(
        "send",
        "POST the `data` field as the JSON body (by default the whole message, as stored)",
        {"data": Field("the JSON body", default=WHOLE_MESSAGE, required=True)},
    )
}
PRESETS = (Preset("Send every message", "send", EVERY_TYPE),)


class Webhook:
    def __init__(self, config: WebhookDestination, actions: list[Action]) -> None:
        self.name = config.name
        self.actions = actions
        self._url = config.url
        self._batched = config.batch_size > 1
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        key = secret(config.name, config.secret, config.secret_env, "secret")
        self._secret = key.encode() if key else None
        # Quoted back by no error text: the signing secret, credential headers and URL parts.
        self._secrets = (
            *webhook_secrets(config.name, config.url, config.headers),
            *([key] if key else []),
        )
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": f"cdpd/{__version__}",
            **config.headers,
        }

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        if self._batched:
            body = b'{"batch":[' + b",".join(mapped_json(i, "data") for i in items) + b"]}"
            headers = dict(self._headers)
            headers["Idempotency-Key"] = batch_key([i.delivery.message_id for i in items])
            result = await self._post(session, body, headers)
            return [result] * len(items)
        if len(items) == 1:  # one message per request (batch_size 1): no task to gather
            return [await self._send_one(session, items[0])]
        return list(await asyncio.gather(*(self._send_one(session, item) for item in items)))

    async def _send_one(self, session: aiohttp.ClientSession, item: Prepared) -> Result:
        problem = header_problem("messageId", item.delivery.message_id)
        if problem:  # stored before ingest refused such ids
            return Result(None, problem, invalid=True)
        headers = dict(self._headers)
        headers["X-Cdpd-Message-Id"] = headers["Idempotency-Key"] = item.delivery.message_id
        return await self._post(session, mapped_json(item, "data"), headers)

    async def _post(
        self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> Result:
        if self._secret is not None:
            timestamp = str(int(time.time()))
            headers["X-Cdpd-Timestamp"] = timestamp
            headers["X-Cdpd-Signature"] = "v1=" + sign(self._secret, timestamp, body)
        answer = await http.request(
            session,
            "POST",
            self._url,
            body=body,
            headers=headers,
            limit=self._timeout,
            secrets=self._secrets,
        )
        return answer.result


def batch_key(message_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(message_ids).encode()).hexdigest()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
