"""What every destination implements, and what an attempt's result looks like."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Protocol, cast

import aiohttp
import msgspec
import structlog

from cdpd.model.statuses import CREDENTIALS_REFUSED
from cdpd.settings import ConfigError, env_secret

log = structlog.get_logger()

if TYPE_CHECKING:
    from cdpd.destinations.actions import Action, Prepared

MAX_ERROR_CHARS = 500


class Result(msgspec.Struct, frozen=True, gc=False):
    """What happened to one item in an attempt. `status` is None for a timeout or a
    connection error; `retry_after_s` is the destination's Retry-After, if any. `invalid`: the
    destination can never take it as it is (never retried); `skipped`: nothing had to be sent."""

    status: int | None
    error: str | None = None
    retry_after_s: float | None = None
    invalid: bool = False
    skipped: bool = False
    # The destination takes this item only after this time (a daily quota that resets): it
    # waits until then, and its retry window starts again then (the wait is not a failure).
    parked_until_ms: int | None = None


def credentials_refused(result: Result) -> Result:
    """`result`, its error marked as the destination refusing cdpd's credentials (delivery then
    marks the destination unhealthy, as after a 401)."""
    return msgspec.structs.replace(
        result, error=CREDENTIALS_REFUSED + (result.error or f"HTTP {result.status}")
    )


class Destination(Protocol):
    name: str
    actions: list[Action]

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        """Send the prepared items (one request, or as many as the API needs); one Result
        per item, in order. Network failures are returned as results, never raised."""
        ...


class Background(Protocol):
    """A destination that works between sends (a file destination rotating an idle file, say)
    implements `run`: delivery runs it as a task of its own until `stop` is set."""

    async def run(self, stop: asyncio.Event) -> None: ...


class Closable(Protocol):
    """A destination that holds connections of its own (a broker client) implements `close`:
    delivery calls it once, after its lane has stopped and its last attempt has finished."""

    async def close(self) -> None: ...


async def close_all(senders: Iterable[Destination]) -> None:
    """Close the destinations that hold connections of their own; one that fails to close is
    logged and the rest are still closed."""
    for sender in senders:
        if hasattr(sender, "close"):
            try:
                await cast(Closable, sender).close()
            except Exception:
                log.exception("destination_close_failed", destination=sender.name)


def header_problem(name: str, value: str) -> str | None:
    """Why `value` cannot be sent in the header `name` (a control character, which HTTP and
    NATS headers cannot carry), or None. Such an item is invalid at once, never retried."""
    for char in value:
        if ord(char) < 32 or ord(char) == 127:
            return f"{name} holds the control character U+{ord(char):04X}"
    return None


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


def secret(destination: str, value: str | None, env: str | None, what: str) -> str | None:
    """A credential given in the config or, better, named by an environment variable."""
    if value:
        return value
    if env:
        found = env_secret(env)
        if not found:
            raise ConfigError(
                f"destination {destination!r}: {what}_env names {env}, which is not set"
                " (neither an environment variable nor a systemd credential)"
            )
        return found
    return None


def required_secret(destination: str, value: str | None, env: str | None, what: str) -> str:
    """`secret()` for a credential the destination cannot work without."""
    found = secret(destination, value, env, what)
    if not found:
        raise ConfigError(
            f"destination {destination!r}: needs {what}, or {what}_env naming the environment"
            " variable that holds it"
        )
    return found
