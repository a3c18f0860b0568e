"""One HTTP request to a vendor API, its answer as a Result, and error texts that never carry
a credential (Slack's webhook URL, GA4's api_secret in the query string).

Redirects are not followed (a 302 would turn a POST into a body-less GET); the answer body is
read up to `max_body_bytes`, enough for the error texts and the per-item reports the APIs give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote, quote_plus

import aiohttp
import msgspec

from cdpd.destinations.base import MAX_ERROR_CHARS, Result, retry_after_s

MAX_BODY_BYTES = 64 * 1024


class Answer(msgspec.Struct, frozen=True, gc=False):
    """A request's Result and the body the API answered with (empty on a network error)."""

    result: Result
    body: bytes = b""


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret (and its URL-quoted form) replaced by `***`."""
    for value in secrets:
        for form in (value, quote(value, safe=""), quote_plus(value, safe="")):
            if form:
                text = text.replace(form, "***")
    return text


def error_text(status: int, body: bytes, secrets: Sequence[str] = ()) -> str:
    text = body[:MAX_ERROR_CHARS].decode("utf-8", errors="replace").strip()
    text = redact(text, secrets)
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    limit: aiohttp.ClientTimeout,
    secrets: Sequence[str] = (),
    params: Mapping[str, str] | None = None,
) -> Answer:
    """Send one request; 2xx answers come back with status only, others with the answer's
    text as the error and its Retry-After. `secrets` are scrubbed from every error text."""
    try:
        async with session.request(
            method,
            url,
            data=body,
            headers=headers,
            params=params,
            timeout=limit,
            allow_redirects=False,
        ) as response:
            answered = await response.content.read(MAX_BODY_BYTES)
            if 200 <= response.status < 300:
                return Answer(Result(response.status), answered)
            return Answer(
                Result(
                    response.status,
                    error_text(response.status, answered, secrets),
                    retry_after_s(response.headers.get("Retry-After")),
                ),
                answered,
            )
    except TimeoutError:
        return Answer(Result(None, f"no answer within {limit.total} s"))
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        # Connection errors name the host and sometimes the whole URL: scrub before keeping.
        text = redact(f"{type(exc).__name__}: {exc}", secrets)
        return Answer(Result(None, text[:MAX_ERROR_CHARS]))
