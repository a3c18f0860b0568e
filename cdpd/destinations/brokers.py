"""What the message-broker destinations (Redis Streams, NATS JetStream, RabbitMQ, MQTT) share:
the publish action, names built safely from templates, a connection opened on first use and
opened again after a failure, and the statuses a broker's answers are recorded with.

Names (a stream key, subject, routing key or topic) come from a `{{path}}` template over the
message. The template's own text is the operator's and is checked once, at config time; the
value put into each slot comes from the sender and is made one safe token: every character
other than an ASCII letter, digit, `_` or `-` becomes `_`, a missing or empty value becomes `_`,
and a value is cut at `MAX_SLOT_CHARS`. So a slot can never add a level, a wildcard (`*`, `>`,
`#`, `+`), a space or an empty token. A name that a mapping gives some other way (`@path`,
`@case`...) is taken only if it passes the broker's rules as it is; otherwise the item is
invalid (never retried).

Statuses (the delivery tables speak HTTP's): `ACCEPTED` (200) when the broker confirmed the
message; None when the connection failed or the broker did not answer in `timeout_s` (retried,
and the connection is opened afresh); `UNAVAILABLE` (503) when the broker answered that it
cannot take the message now (retried); `REFUSED` (400) when it refused a message that would be
refused again (dead at once).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, Generic, TypeVar

import msgspec

from cdpd.destinations.actions import (
    EVERY_TYPE,
    WHOLE_MESSAGE,
    Action,
    ActionKind,
    Field,
    Prepared,
    Preset,
)
from cdpd.destinations.base import MAX_ERROR_CHARS, Result
from cdpd.mapping import kit
from cdpd.model.statuses import CREDENTIALS_REFUSED
from cdpd.settings import ConfigError

ACCEPTED = 200
REFUSED = 400
UNAVAILABLE = 503
MAX_SLOT_CHARS = 128
SLOT = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

Client = TypeVar("Client")


def publish_kind(name_field: str, what: str) -> dict[str, ActionKind]:
    """The one action kind of a broker: the payload, and the name it is published under."""
    return {
        "publish": ActionKind(
            "publish",
            f"Publish the `payload` field as JSON (by default the whole message, as stored) to"
            f" the {what} that `{name_field}` names (by default the destination's"
            f" `{name_field}` setting)",
            {
                "payload": Field("the JSON published", default=WHOLE_MESSAGE, required=True),
                name_field: Field(
                    f"the {what}: a {{{{path}}}} template whose slots are made safe tokens"
                ),
            },
        )
    }


PRESETS = (Preset("Publish every message", "publish", EVERY_TYPE),)


class Names:
    """Renders the name an item is published under, from the action's `@template` (or the
    destination's setting), with each slot made a safe token; see the module docstring."""

    def __init__(
        self,
        destination: str,
        setting: str,
        template: str,
        actions: Sequence[Action],
        check: Callable[[str], str | None],
    ) -> None:
        self._field = setting
        self._check = check
        self._default = _checked_template(destination, setting, template, check)
        self._templates: dict[str, str | None] = {}
        for action in actions:
            mapped = action.mapping.get(setting)
            if (
                isinstance(mapped, dict)
                and set(mapped) == {"@template"}
                and isinstance(mapped["@template"], str)
            ):
                where = f"actions ({action.name}).mapping.{setting}"
                self._templates[action.name] = _checked_template(
                    destination, where, mapped["@template"], check
                )
            else:
                self._templates[action.name] = None if mapped is not None else self._default

    def render(self, item: Prepared, message: dict[str, Any]) -> tuple[str | None, str | None]:
        """(name, None), or (None, why the item cannot be published)."""
        template = self._templates.get(item.action, self._default)
        if template is not None:
            name = render(template, message)
            problem = self._check(name)  # only its length can fail: the slots are safe
            return (None, f"{item.action}: {self._field}: {problem}") if problem else (name, None)
        value = item.fields.get(self._field)
        if not isinstance(value, str):
            return None, f"{item.action}: {self._field} must be a text, got {value!r}"[:200]
        problem = self._check(value)
        if problem:
            return None, f"{item.action}: {self._field} {value[:100]!r}: {problem}"
        return value, None


def render(template: str, message: dict[str, Any]) -> str:
    return SLOT.sub(lambda slot: safe_token(kit.lookup(message, slot.group(1))), template)


def safe_token(value: Any) -> str:
    if value is kit.ABSENT or value is None:
        return "_"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (dict, list)):
        text = _encoder.encode(value).decode()
    else:
        text = str(value)
    return _UNSAFE.sub("_", text[:MAX_SLOT_CHARS]) or "_"


def _checked_template(
    destination: str, where: str, template: str, check: Callable[[str], str | None]
) -> str:
    problem = check(SLOT.sub("x", template))
    if problem:
        raise ConfigError(f"destination {destination!r}: {where} {template!r}: {problem}")
    return template


def check_tokens(
    name: str, separator: str, forbidden: str, max_bytes: int, *, empty_ok: bool = False
) -> str | None:
    """Why `name` is not a safe name for a broker whose levels are split by `separator`."""
    if not name:
        return None if empty_ok else "is empty"
    if len(name.encode()) > max_bytes:
        return f"is longer than {max_bytes} bytes"
    if any(char.isspace() or ord(char) < 32 for char in name):
        return "has a space or a control character"
    bad = sorted({char for char in forbidden if char in name})
    if bad:
        return f"has a wildcard ({' '.join(bad)})"
    if separator and "" in name.split(separator):
        return f"has an empty level (a leading, trailing or doubled {separator!r})"
    return None


def message_of(item: Prepared) -> dict[str, Any]:
    """The decoded message (an action that sends it whole was given none)."""
    if item.message is not None:
        return item.message
    try:
        decoded = _decoder.decode(item.delivery.payload)
    except msgspec.DecodeError:  # a number out of range, stored by an older cdpd
        return {}  # its name is made without the message's values; the payload goes as stored
    return decoded if isinstance(decoded, dict) else {}


def failed(exc: BaseException, what: str = "") -> Result:
    """A connection failure or a timeout: retried (with backoff). Refused credentials are
    retried too (a fixed secret and a reload bring them back) but mark the lane unhealthy."""
    if refuses_credentials(exc):
        return Result(None, CREDENTIALS_REFUSED + problem(exc, what))
    return Result(None, problem(exc, what))


# What the broker clients raise, or say, when the broker refuses the credentials: redis-py's
# AuthenticationError (WRONGPASS, NOAUTH), aio-pika's ProbableAuthenticationError and
# ACCESS_REFUSED, nats-py's AuthorizationError, MQTT's CONNACK "not authorized" / "bad user
# name or password".
_AUTH_CLASSES = ("AuthenticationError", "AuthorizationError", "ProbableAuthenticationError")
_AUTH_WORDS = re.compile(
    r"WRONGPASS|NOAUTH|ACCESS_REFUSED|authorization violation|not authori[sz]ed|"
    r"bad user ?name or password|authentication failed|invalid username",
    re.IGNORECASE,
)


def refuses_credentials(exc: BaseException) -> bool:
    if any(kind.__name__ in _AUTH_CLASSES for kind in type(exc).__mro__):
        return True
    return bool(_AUTH_WORDS.search(f"{exc!r} {exc}"))


def problem(exc: BaseException, what: str = "") -> str:
    text = str(exc) or repr(exc)
    prefix = f"{what}: " if what else ""
    return f"{prefix}{type(exc).__name__}: {text}"[:MAX_ERROR_CHARS]


class Connection(Generic[Client]):
    """One client, opened on first use and held across sends. `lost(client)` after a failure
    closes it, so the next send opens a new one, as does finding it no longer `alive`;
    `close()` is idempotent."""

    def __init__(
        self,
        open_client: Callable[[], Awaitable[Client]],
        close_client: Callable[[Client], Awaitable[Any]],
        alive: Callable[[Client], bool] = lambda _: True,
    ) -> None:
        self._open = open_client
        self._close = close_client
        self._alive = alive
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def get(self) -> Client:
        async with self._lock:
            if self._closed:
                raise ConnectionError("the destination is closed")
            if self._client is not None and not self._alive(self._client):
                await self._quietly_close(self._client)
                self._client = None
            if self._client is None:
                self._client = await self._open()
            return self._client

    async def lost(self, client: Client | None) -> None:
        if client is None or client is not self._client:
            return
        self._client = None
        await self._quietly_close(client)

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await self._quietly_close(client)

    async def _quietly_close(self, client: Client) -> None:
        with suppress(Exception):  # the client is being thrown away either way
            async with asyncio.timeout(5):
                await self._close(client)
