"""Checking and normalising one message as Segment's Tracking API does. Pure functions, no I/O.

A message that fails a check becomes a `Rejection` with a reason code; one that passes becomes an
`OutboxRow` holding the normalised JSON text and the plain columns the outbox indexes.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import msgspec

from cdpd.model.spec import MESSAGE_TYPES, MessageFields
from cdpd.model.timestamps import format_ms, to_epoch_ms

MAX_MESSAGE_ID_CHARS = 100
# Keys removed from every stored message: the write key is a credential, not data.
_DROPPED_KEYS = frozenset({"writeKey"})

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class RequestFacts(NamedTuple):
    """What the request tells about every message in it."""

    source: str
    request_id: str
    received_at_ms: int
    received_at: str
    sent_at_ms: int | None
    context: dict[str, Any] | None
    integrations: dict[str, Any] | None
    client_ip: str | None
    fill_ip: bool  # browser and mobile paths: Segment fills context.ip for every message


class OutboxRow(NamedTuple):
    message_id: str
    source: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    received_at: str
    payload: str


class Rejection(NamedTuple):
    code: str
    reason: str
    message_id: str | None
    payload: str


class Invalid(Exception):
    """One message breaks a rule; `code` is the reason code stored with it."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def normalize_raw(
    raw: bytes | msgspec.Raw, facts: RequestFacts, *, path_type: str | None, max_bytes: int
) -> OutboxRow | Rejection:
    """Check and normalise one message given as JSON bytes."""
    if len(raw) > max_bytes:
        return _reject(
            "event_too_large", f"the message is {len(raw)} bytes; the limit is {max_bytes}", raw
        )
    try:
        message = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        return _reject("invalid_json", f"the message is not valid JSON: {exc}", raw)
    return normalize(message, facts, path_type=path_type, raw=raw)


def normalize(
    message: Any,
    facts: RequestFacts,
    *,
    path_type: str | None,
    raw: bytes | msgspec.Raw | None = None,
) -> OutboxRow | Rejection:
    """Check and normalise one decoded message; `raw` is what gets stored if it is rejected."""
    if not isinstance(message, dict):
        return _reject(
            "invalid_message", f"expected a JSON object, got {_json_kind(message)}", raw, message
        )
    try:
        return _normalize_object(message, facts, path_type)
    except Invalid as exc:
        message_id = message.get("messageId")
        return _reject(
            exc.code,
            exc.reason,
            raw,
            message,
            message_id if isinstance(message_id, str) else None,
        )


def _normalize_object(
    message: dict[str, Any], facts: RequestFacts, path_type: str | None
) -> OutboxRow:
    fields = _typed_fields(message)
    kind = path_type or fields.type
    if kind is None:
        raise Invalid("missing_type", f"a batch item needs a type, one of {', '.join(MESSAGE_TYPES)}")
    user_id = _id_text(fields.userId)
    anonymous_id = _id_text(fields.anonymousId)
    _check_required(kind, fields, user_id, anonymous_id)
    message_id = fields.messageId or str(uuid.uuid4())
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise Invalid(
            "message_id_too_long",
            f"messageId is {len(message_id)} characters; the limit is {MAX_MESSAGE_ID_CHARS}",
        )

    out = {k: v for k, v in message.items() if v is not None and k not in _DROPPED_KEYS}
    out["type"] = kind
    out["messageId"] = message_id
    _set_ids(out, fields, user_id, anonymous_id)
    _set_timestamps(out, fields, facts)
    _merge_request_objects(out, facts)

    return OutboxRow(
        message_id=message_id,
        source=facts.source,
        type=kind,
        event=fields.event if kind == "track" else fields.name,
        user_id=user_id,
        anonymous_id=anonymous_id,
        received_at=facts.received_at,
        payload=_encoder.encode(out).decode(),
    )


def _typed_fields(message: dict[str, Any]) -> MessageFields:
    try:
        return msgspec.convert(message, MessageFields)
    except msgspec.ValidationError as exc:
        text, _, where = str(exc).rpartition(" - at `$")
        field = where.rstrip("`").lstrip(".") or "message"
        raise Invalid("invalid_field", f"{field}: {text or exc}") from None


def _id_text(value: str | int | None) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text or None


def _check_required(
    kind: str, fields: MessageFields, user_id: str | None, anonymous_id: str | None
) -> None:
    if user_id is None and anonymous_id is None:
        raise Invalid("no_user_anon_id", "the message needs a userId or an anonymousId")
    if kind == "track" and not fields.event:
        raise Invalid("missing_event", "a track message needs an event name")
    if kind == "group" and _id_text(fields.groupId) is None:
        raise Invalid("missing_group_id", "a group message needs a groupId")
    if kind == "alias" and _id_text(fields.previousId) is None:
        raise Invalid("missing_previous_id", "an alias message needs a previousId")


def _set_ids(
    out: dict[str, Any], fields: MessageFields, user_id: str | None, anonymous_id: str | None
) -> None:
    """Store every id as text; an empty id counts as absent."""
    for key, text in (
        ("userId", user_id),
        ("anonymousId", anonymous_id),
        ("groupId", _id_text(fields.groupId)),
        ("previousId", _id_text(fields.previousId)),
    ):
        if text is None:
            out.pop(key, None)
        else:
            out[key] = text


def _set_timestamps(out: dict[str, Any], fields: MessageFields, facts: RequestFacts) -> None:
    """Segment's clock-skew correction: timestamp = receivedAt - (sentAt - originalTimestamp)."""
    original = fields.timestamp or fields.originalTimestamp
    sent_ms = to_epoch_ms(fields.sentAt) if fields.sentAt is not None else facts.sent_at_ms
    out["receivedAt"] = facts.received_at
    out.pop("timestamp", None)
    if sent_ms is not None:
        out["sentAt"] = _format(sent_ms, "sentAt")
    if original is None:
        out.pop("originalTimestamp", None)
        out["timestamp"] = facts.received_at
        return
    original_ms = to_epoch_ms(original)
    out["originalTimestamp"] = _format(original_ms, "timestamp")
    if sent_ms is None:
        out["timestamp"] = out["originalTimestamp"]
    else:
        out["timestamp"] = _format(facts.received_at_ms - (sent_ms - original_ms), "timestamp")


def _format(epoch_ms: int, field: str) -> str:
    try:
        return format_ms(epoch_ms)
    except ValueError as exc:
        raise Invalid("invalid_field", f"{field}: {exc}") from None


def _merge_request_objects(out: dict[str, Any], facts: RequestFacts) -> None:
    """Merge the batch envelope's context and integrations (the message's own keys win) and fill
    context.ip where Segment does: browser paths, or when context.direct is true."""
    context = out.get("context")
    if facts.context:
        context = {**facts.context, **(context or {})}
    if facts.client_ip and (facts.fill_ip or (context or {}).get("direct") is True):
        if not (context or {}).get("ip"):
            context = {**(context or {}), "ip": facts.client_ip}
    if context is not None:
        out["context"] = context
    if facts.integrations:
        out["integrations"] = {**facts.integrations, **(out.get("integrations") or {})}


def _reject(
    code: str,
    reason: str,
    raw: bytes | msgspec.Raw | None,
    message: Any = None,
    message_id: str | None = None,
) -> Rejection:
    if raw is not None:
        payload = bytes(raw).decode("utf-8", errors="replace")
    else:
        payload = _encoder.encode(message).decode()
    return Rejection(code=code, reason=reason, message_id=message_id, payload=payload)


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
