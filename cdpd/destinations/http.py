"""What the API destinations share: one request with its answer read (never raising for the
network, redirects not followed, credentials scrubbed from every error text), and batches cut to
an API's count and byte limits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import aiohttp
import msgspec
from yarl import URL

from cdpd.destinations.base import MAX_ERROR_CHARS, Result, error_text, retry_after_s
from cdpd.model.timestamps import now_ms, parse_ms

T = TypeVar("T")
MAX_ANSWER_BYTES = 1 << 20  # an error body naming failed records can be long; read this much


class Answer(msgspec.Struct, frozen=True, gc=False):
    """An API's answer, or (status None) why there was none. `secrets` are scrubbed from the
    error texts it gives (an API may quote the key it was sent, or the URL that holds it)."""

    status: int | None
    body: bytes = b""
    retry_after_s: float | None = None
    error: str | None = None  # the network error, when status is None
    secrets: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def result(self) -> Result:
        """Success for a 2xx answer, else `failure()`."""
        return Result(self.status) if self.ok else self.failure()

    def failure(self) -> Result:
        """This answer as a failing Result for every item the request carried."""
        if self.status is None:
            return Result(None, redact(self.error or "no answer", self.secrets))
        # The whole answer is scrubbed before it is cut, so no part of a secret survives a cut.
        answered = redact(self.body.decode("utf-8", errors="replace"), self.secrets)
        text = error_text(self.status, answered.encode())[:MAX_ERROR_CHARS]
        return Result(self.status, text, self.retry_after_s)

    def json(self) -> object:
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            return None


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    *,
    body: bytes,
    headers: Mapping[str, str],
    limit: aiohttp.ClientTimeout,
    params: Mapping[str, str] | None = None,
    secrets: Sequence[str] = (),
) -> Answer:
    kept = tuple(s for s in secrets if s)
    try:
        # A redirect is an answer, not a place to go (a 302 would turn the POST into a GET).
        async with session.request(
            method,
            url,
            data=body,
            headers=headers,
            params=params,
            timeout=limit,
            allow_redirects=False,
        ) as response:
            answered = await read_capped(response.content, MAX_ANSWER_BYTES)
            after = retry_after_s(response.headers.get("Retry-After"))
            return Answer(response.status, answered, after, secrets=kept)
    except TimeoutError:
        return Answer(None, error=f"no answer within {limit.total} s", secrets=kept)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        # Connection errors name the host and sometimes the whole URL: scrubbed by `failure`
        # (which cuts the text only then).
        return Answer(None, error=f"{type(exc).__name__}: {exc}", secrets=kept)


async def read_capped(content: aiohttp.StreamReader, limit_bytes: int) -> bytes:
    """The body, to its end or its first `limit_bytes`. One `read(n)` gives only what has
    arrived so far, and a long answer (a 400 naming failed records) comes in several pieces."""
    parts: list[bytes] = []
    size = 0
    while size < limit_bytes:
        part = await content.read(limit_bytes - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret (and its URL-quoted forms) replaced by `***`, then capped (cut
    a text only after this: a cut could leave the start of a secret that no longer matches)."""
    for value in secrets:
        quoted = (
            quote(value, safe=""),
            quote(value),
            quote_plus(value, safe=""),
            quote_plus(value),
        )
        for form in (value, *quoted):
            if form:
                text = text.replace(form, "***")
    return text[:MAX_ERROR_CHARS]


def chunks(
    encoded: Sequence[tuple[T, bytes]], max_count: int, max_bytes: int, overhead_bytes: int
) -> Iterator[list[tuple[T, bytes]]]:
    """Consecutive runs of (item, JSON) whose JSON array, with `overhead_bytes` around it,
    stays within `max_bytes` and `max_count`. A record too large on its own goes alone (the
    API then answers for it)."""
    run: list[tuple[T, bytes]] = []
    size = overhead_bytes + 2
    for item, record in encoded:
        grown = size + len(record) + (1 if run else 0)
        if run and (len(run) >= max_count or grown > max_bytes):
            yield run
            run, grown = [], overhead_bytes + 2 + len(record)
        run.append((item, record))
        size = grown
    if run:
        yield run


def json_array(records: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(records) + b"]"


def time_ms(value: Any) -> int:
    """Epoch milliseconds of a mapped time (ISO text or a number); now when there is none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            return parse_ms(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"time {value[:40]!r} is not a date") from None
    return now_ms()
