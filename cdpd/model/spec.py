"""Segment Spec messages as they arrive: the typed view used to validate them.

Messages are kept as JSON objects so that fields the Spec does not name pass through untouched;
`MessageFields` is the typed view of the fields cdpd reads, and decoding into it is the check
that each of those fields has the right type.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

MessageType = Literal["identify", "track", "page", "screen", "group", "alias"]
MESSAGE_TYPES: tuple[str, ...] = ("identify", "track", "page", "screen", "group", "alias")

# Clients may send numeric ids (analytics-python stringifies them, others do not); cdpd stores
# every id as a string.
Id = str | int


class MessageFields(msgspec.Struct, kw_only=True):
    type: MessageType | None = None
    messageId: str | None = None
    userId: Id | None = None
    anonymousId: Id | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    groupId: Id | None = None
    previousId: Id | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class BatchEnvelope(msgspec.Struct, kw_only=True):
    """The body of /v1/batch, /v1/import and /v1/b; items stay raw until each is checked."""

    batch: list[msgspec.Raw]
    writeKey: str | None = None
    sentAt: datetime | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class SingleEnvelope(msgspec.Struct, kw_only=True):
    """The fields of a single-message body that apply to the request as a whole."""

    writeKey: str | None = None
    sentAt: datetime | None = None
