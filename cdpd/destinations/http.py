"""What the API destinations share: one POST with its answer read (never raising for the
network), batches cut to an API's count and byte limits, and the worst of several results."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import aiohttp
import msgspec

from cdpd.delivery import policy
from cdpd.destinations.base import MAX_ERROR_CHARS, Result, error_text, retry_after_s
from cdpd.model.timestamps import now_ms, parse_ms

T = TypeVar("T")
MAX_ANSWER_BYTES = 1 << 20  # an error body naming failed records can be long; read this much


class Answer(msgspec.Struct, frozen=True, gc=False):
    """An API's answer, or (status None) why there was none."""

    status: int | None
    body: bytes = b""
    retry_after_s: float | None = None
    error: str | None = None  # the network error, when status is None

    def failure(self, redact: str | None = None) -> Result:
        """This answer as a failing Result for every item the request carried."""
        if self.status is None:
            return Result(None, self.error)
        text = error_text(self.status, self.body)
        if redact:
            text = text.replace(redact, "***")
        return Result(self.status, text, self.retry_after_s)

    def json(self) -> object:
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            return None


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    data: bytes,
    headers: dict[str, str],
    client_timeout: aiohttp.ClientTimeout,
) -> Answer:
    try:
        # A redirect is an answer, not a place to go (a 302 would turn the POST into a GET).
        async with session.post(
            url, data=data, headers=headers, timeout=client_timeout, allow_redirects=False
        ) as response:
            body = await response.content.read(MAX_ANSWER_BYTES)
            return Answer(response.status, body, retry_after_s(response.headers.get("Retry-After")))
    except TimeoutError:
        return Answer(None, error=f"no answer within {client_timeout.total} s")
    except (aiohttp.ClientError, OSError) as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])


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


def worst(results: Sequence[Result]) -> Result:
    """One result for several requests made for one item: a retryable failure first (the
    item is tried again), else a permanent one, else success."""
    failures = [r for r in results if not policy.is_success(r.status) or r.invalid]
    retryable = [r for r in failures if not r.invalid and policy.is_retryable(r.status)]
    return (
        retryable or failures or list(results) or [Result(None, "nothing to send", skipped=True)]
    )[0]


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
