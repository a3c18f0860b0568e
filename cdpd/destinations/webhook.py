"""The webhook destination: the normalised Segment message as JSON, one per request, or up to
`batch_size` per request as `{"batch": [...]}`, optionally signed.

Headers: `Content-Type: application/json`, `User-Agent: cdpd/<version>`, the configured
headers, and for single messages `X-Cdpd-Message-Id` and `Idempotency-Key` (the messageId). With
a shared secret: `X-Cdpd-Timestamp` (Unix seconds) and `X-Cdpd-Signature: v1=<hex>`, the
HMAC-SHA256 of `"<timestamp>." + body` (the exact bytes sent) with the secret as key.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

import aiohttp

from cdpd import __version__
from cdpd.config import WebhookDestination
from cdpd.delivery.store import Claimed
from cdpd.destinations.base import MAX_ERROR_CHARS, Result, error_text, retry_after_s


class Webhook:
    catalog_name = "Webhooks"

    def __init__(self, config: WebhookDestination, secret: str | None) -> None:
        self.name = config.name
        self._url = config.url
        self._batched = config.batch_size > 1
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._secret = secret.encode() if secret else None
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": f"cdpd/{__version__}",
            **config.headers,
        }

    async def send(self, session: aiohttp.ClientSession, batch: Sequence[Claimed]) -> list[Result]:
        body, headers = self._request(batch)
        result = await self._post(session, body, headers)
        return [result] * len(batch)

    def _request(self, batch: Sequence[Claimed]) -> tuple[bytes, dict[str, str]]:
        headers = dict(self._headers)
        if self._batched:
            body = ('{"batch":[' + ",".join(item.payload for item in batch) + "]}").encode()
        else:
            (item,) = batch
            body = item.payload.encode()
            headers["X-Cdpd-Message-Id"] = item.message_id
            headers["Idempotency-Key"] = item.message_id
        if self._secret is not None:
            timestamp = str(int(time.time()))
            headers["X-Cdpd-Timestamp"] = timestamp
            headers["X-Cdpd-Signature"] = "v1=" + sign(self._secret, timestamp, body)
        return body, headers

    async def _post(
        self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> Result:
        try:
            async with session.post(
                self._url, data=body, headers=headers, timeout=self._timeout
            ) as response:
                if 200 <= response.status < 300:
                    return Result(response.status)
                text = await response.content.read(MAX_ERROR_CHARS)
                return Result(
                    response.status,
                    error_text(response.status, text),
                    retry_after_s(response.headers.get("Retry-After")),
                )
        except TimeoutError:
            return Result(None, f"no answer within {self._timeout.total} s")
        except aiohttp.ClientError as exc:
            return Result(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        except OSError as exc:
            return Result(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
