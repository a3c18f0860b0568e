"""Segment Spec messages as they arrive: the typed view used to validate them.

A message is decoded twice, both cheaply: as a mapping of top-level keys to raw JSON values, so
that fields the Spec does not name pass through byte for byte, and as `MessageHead`, the typed
view of the fields cdpd reads. Decoding into `MessageHead` is the check that each of those
fields has the right type. Nested objects are only checked to be objects: their contents are
the sender's business. `MessageFields` is the same view with the nested objects decoded one level
(`dict[str, Raw]`); it is only used to word the error when a message fails the check, so that the
words stay those cdpd has always stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

MessageType = Literal["identify", "track", "page", "screen", "group", "alias"]
MESSAGE_TYPES: tuple[str, ...] = ("identify", "track", "page", "screen", "group", "alias")

# Clients may send numeric ids (analytics-python stringifies them, others do not); cdpd stores
# every id as a string.
Id = str | int
# A JSON object whose values are kept as the raw bytes that were received.
RawObject = dict[str, msgspec.Raw]
NULL = msgspec.Raw(b"null")


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
    properties: RawObject | None = None
    traits: RawObject | None = None
    context: RawObject | None = None
    integrations: RawObject | None = None


class AnyObject(msgspec.Struct, gc=False):
    """Any JSON object: decoding one checks its shape and skips its contents."""


class MessageHead(msgspec.Struct, kw_only=True, gc=False):
    """`MessageFields` with the nested objects only checked to be objects (their contents are in
    the top-level `RawObject`)."""

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
    properties: AnyObject | None = None
    traits: AnyObject | None = None
    context: AnyObject | None = None
    integrations: AnyObject | None = None


class BatchEnvelope(msgspec.Struct, kw_only=True):
    """The body of /v1/batch, /v1/import and /v1/b; items stay raw until each is checked.

    Only `batch` must have the right shape: the other envelope fields are checked one by one
    (ingest/routes.py), and one of the wrong type is ignored rather than failing every
    message in the request."""

    batch: list[msgspec.Raw]
    writeKey: msgspec.Raw = NULL
    sentAt: msgspec.Raw = NULL
    context: msgspec.Raw = NULL
    integrations: msgspec.Raw = NULL


class SingleEnvelope(msgspec.Struct, kw_only=True):
    """The write key of a single-message body (the rest is the message, checked as one)."""

    writeKey: msgspec.Raw = NULL
