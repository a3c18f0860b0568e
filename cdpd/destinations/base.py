"""What every destination implements, and what an attempt's result looks like."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from datetime import UTC
from typing import Protocol

import aiohttp
import msgspec

from cdpd.delivery.store import Claimed

MAX_ERROR_CHARS = 500


class Result(msgspec.Struct, frozen=True, gc=False):
    """What happened to one delivery in an attempt. `status` is None for a timeout or a
    connection error; `retry_after_s` is the destination's Retry-After, if any."""

    status: int | None
    error: str | None = None
    retry_after_s: float | None = None


class Destination(Protocol):
    name: str
    catalog_name: str  # the name Segment's integrations object uses for this kind of tool

    async def send(self, session: aiohttp.ClientSession, batch: Sequence[Claimed]) -> list[Result]:
        """Attempt the batch (one request, or more when the API needs it); one Result per item,
        in order. Network failures are returned as results, never raised."""
        ...


def retry_after_s(header: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, whatever the local zone is
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def error_text(status: int, body: bytes) -> str:
    text = body[:MAX_ERROR_CHARS].decode("utf-8", errors="replace").strip()
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"
