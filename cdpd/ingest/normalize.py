"""Checking and normalising one message as Segment's Tracking API does. Pure functions, no I/O.

A message that fails a check becomes a `Rejection` with a reason code; one that passes becomes an
`OutboxRow` holding the normalised JSON text and the plain columns the outbox indexes. Values
cdpd does not change are copied as the raw bytes that arrived, never re-encoded.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

from cdpd.model.rows import OutboxRow
from cdpd.model.spec import MESSAGE_TYPES, NULL, MessageFields, MessageHead, RawObject
from cdpd.model.timestamps import format_ms, to_epoch_ms

MAX_MESSAGE_ID_CHARS = 100
TRUE = msgspec.Raw(b"true")
# Numbers every consumer can read: integers of 64 bits (signed or unsigned), other numbers
# within a double's range.
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**64 - 1
# C0 and C1 control characters and DEL: never valid in an HTTP header, where messageIds go.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")
# A number out of range has 19 digits in a row, or an exponent of 3 digits, and like every JSON
# number it ends where the text around it does: at white space or `,]}`. To look for one in a
# few fast passes, each byte becomes its class: `0` a digit, `e` one of `eE`, `s` a sign, `.`
# the point, ` ` white space or `,:[]{}` (what may start or end a number), `a` anything else.
# Text can match too: a match only calls for a closer look. Ids seldom do: `...191e810c` is
# `000e000a`, and `ajs-next-1701234567890-...` has no `e` before its digits, which end in `-`.
_NUMBER_BYTES = bytes(
    b"0"[0] if 48 <= b <= 57
    else b"e"[0] if b in b"eE"
    else b"s"[0] if b in b"+-"
    else b"."[0] if b == b"."[0]
    else b" "[0] if b in b" \t\r\n,:[]{}"
    else b"a"[0]
    for b in range(256)
)  # fmt: skip
_EXPONENT, _SIGNED_EXPONENT, _LONG_DIGITS = b"e000", b"es000", b"0" * 19
_DIGIT_EXPONENT, _DIGIT_SIGNED_EXPONENT = b"0e000", b"0es000"  # what a number's exponent is
_DIGIT = b"0"[0]
_ENDS_EXPONENT = frozenset(b" ")
_ENDS_DIGITS = frozenset(b" .e")  # what may follow an integer part's digits
_STARTS_DIGITS = frozenset(b" s")  # what may come before them

_encoder = msgspec.json.Encoder()
_top_level_decoder = msgspec.json.Decoder(RawObject)
_head_decoder = msgspec.json.Decoder(MessageHead)
_fields_decoder = msgspec.json.Decoder(MessageFields)
_value_decoder = msgspec.json.Decoder()
_object_decoder = msgspec.json.Decoder(RawObject)


class RequestFacts(msgspec.Struct, frozen=True, gc=False):
    """What the request tells about every message in it."""

    source: str
    request_id: str
    received_at_ms: int
    received_at: str
    sent_at_ms: int | None  # the batch envelope's sentAt; a message's own sentAt wins
    sent_at: str | None
    context: RawObject | None  # the batch envelope's; merged under each message's own
    integrations: RawObject | None
    client_ip: str | None
    fill_ip: bool  # browser and mobile paths: Segment fills context.ip for every message


class Rejection(msgspec.Struct, frozen=True, gc=False):
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


def normalize(
    raw: bytes | msgspec.Raw,
    facts: RequestFacts,
    *,
    path_type: str | None,
    max_bytes: int,
    top: RawObject | None = None,
) -> OutboxRow | Rejection:
    """Check and normalise one message given as JSON bytes; `path_type` is the type the URL
    names (single-message paths), None for batch items, which must name their own. `top` is the
    message already decoded as a `RawObject`, when the caller had to decode it anyway."""
    if len(raw) > max_bytes:
        return _reject(
            "event_too_large", f"the message is {len(raw)} bytes; the limit is {max_bytes}", raw
        )
    try:
        if top is None:
            top = _top_level_decoder.decode(raw)
        fields = _head(raw)
        return _normalized_row(raw, top, fields, facts, path_type)
    except msgspec.ValidationError as exc:
        where, reason = _field_error(exc)
        return _reject("invalid_field" if where else "invalid_message", reason, raw)
    except msgspec.DecodeError as exc:
        return _reject("invalid_json", f"the message is not valid JSON: {exc}", raw)
    except UnicodeDecodeError as exc:
        return _reject("invalid_json", f"the message is not valid UTF-8: {exc.reason}", raw)
    except RecursionError:
        return _reject("invalid_json", "the message is nested too deeply", raw)
    except Invalid as exc:
        return _reject(exc.code, exc.reason, raw, _text(fields.messageId))


def _head(raw: bytes | msgspec.Raw) -> MessageHead:
    """The typed fields. When one is not of its type, the error is the one decoding as
    `MessageFields` raises."""
    try:
        return _head_decoder.decode(raw)
    except msgspec.ValidationError:
        _fields_decoder.decode(raw)
        raise


def _normalized_row(
    raw: bytes | msgspec.Raw,
    top: RawObject,
    fields: MessageHead,
    facts: RequestFacts,
    path_type: str | None,
) -> OutboxRow:
    kind = path_type or fields.type
    if kind is None:
        raise Invalid(
            "missing_type", f"a batch item needs a type, one of {', '.join(MESSAGE_TYPES)}"
        )
    user_id = _text(fields.userId)
    anonymous_id = _text(fields.anonymousId)
    _check_required(kind, fields, user_id, anonymous_id)
    message_id = fields.messageId or str(uuid.uuid4())
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise Invalid(
            "message_id_too_long",
            f"messageId is {len(message_id)} characters; the limit is {MAX_MESSAGE_ID_CHARS}",
        )
    control = _CONTROL_CHARACTER.search(message_id)
    if control:
        raise Invalid(
            "invalid_message_id",
            f"messageId holds the control character U+{ord(control.group()):04X}",
        )
    if _may_hold_numbers_out_of_range(raw):
        _check_numbers(top)

    if NULL in top.values():
        out: dict[str, Any] = {k: v for k, v in top.items() if v != NULL}
    else:
        out = dict(top)
    out.pop("writeKey", None)  # a credential, not data
    out["type"] = kind
    out["messageId"] = message_id
    _ids_as_text(out, fields)
    _set_timestamps(out, fields, facts)
    _merge_request_objects(out, top, facts)
    if kind in _TRAIT_TYPES and "traits" not in out:
        _traits_from_context(out)

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


def _may_hold_numbers_out_of_range(raw: bytes | msgspec.Raw) -> bool:
    """Never False for a message holding a number out of range. (One pass in C per pattern;
    Python looks only at a match, which most messages have none of.)"""
    classes = bytes(raw).translate(_NUMBER_BYTES)
    # A pattern is looked for in Python only where the C search found it. The shorter one
    # first: it is found faster, and most messages fail it already.
    find = classes.find
    return (
        (find(_EXPONENT) >= 0 and find(_DIGIT_EXPONENT) >= 0 and _has_exponent(classes, _EXPONENT))
        or (
            find(_SIGNED_EXPONENT) >= 0
            and find(_DIGIT_SIGNED_EXPONENT) >= 0
            and _has_exponent(classes, _SIGNED_EXPONENT)
        )
        or (find(_LONG_DIGITS) >= 0 and _has_long_digits(classes))
    )


def _has_exponent(classes: bytes, exponent: bytes) -> bool:
    at = classes.find(exponent)
    while at >= 0:  # an exponent only after a digit (`cafe-1234` is none)
        if at > 0 and classes[at - 1] == _DIGIT:
            end = _digits_end(classes, at + len(exponent))
            if end == len(classes) or classes[end] in _ENDS_EXPONENT:
                return True
        at = classes.find(exponent, at + 1)
    return False


def _has_long_digits(classes: bytes) -> bool:
    at = classes.find(_LONG_DIGITS)
    while at >= 0:
        end = _digits_end(classes, at + len(_LONG_DIGITS))
        started = at == 0 or classes[at - 1] in _STARTS_DIGITS
        if started and (end == len(classes) or classes[end] in _ENDS_DIGITS):
            return True
        at = classes.find(_LONG_DIGITS, end)
    return False


def _digits_end(classes: bytes, at: int) -> int:
    while at < len(classes) and classes[at] == _DIGIT:
        at += 1
    return at


def _check_numbers(top: RawObject) -> None:
    """Raise `number_out_of_range`, naming the top-level field, for a number no 64-bit type
    holds: an integer outside MIN_INTEGER..MAX_INTEGER, or a number beyond a double's range
    (`1e400`). Destinations and warehouses could not read the message back."""
    for key, value in top.items():
        try:
            decoded = _value_decoder.decode(value)
        except msgspec.ValidationError:  # a float out of range, or an integer of many digits
            bad: int | str | None = "a number out of range"
        else:
            bad = _integer_out_of_range(decoded)
        if bad is not None:
            shown = bad if isinstance(bad, str) else f"the integer {str(bad)[:30]}"
            raise Invalid(
                "number_out_of_range",
                f"{key}: holds {shown}; numbers must be 64-bit integers or doubles",
            )


def _integer_out_of_range(value: Any) -> int | None:
    kind = type(value)
    if kind is int:
        return None if MIN_INTEGER <= value <= MAX_INTEGER else value
    children = value.values() if kind is dict else value if kind is list else ()
    for child in children:
        found = _integer_out_of_range(child)
        if found is not None:
            return found
    return None


def _field_error(exc: msgspec.ValidationError) -> tuple[str, str]:
    """The field at fault and a reason naming it: `Expected `str`, got `int` - at `$.userId``
    becomes `userId: expected `str`, got `int``; an error about the whole message names none."""
    text, sep, where = str(exc).rpartition(" - at `$")
    if not sep:
        text = str(exc)
        return "", f"the message must be a JSON object: {text[:1].lower()}{text[1:]}"
    field = where.rstrip("`").lstrip(".")
    return field, f"{field}: {text[:1].lower()}{text[1:]}"


def _text(value: str | int | None) -> str | None:
    """Ids as text; an empty id counts as absent."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text or None


def _check_required(
    kind: str, fields: MessageHead, user_id: str | None, anonymous_id: str | None
) -> None:
    if user_id is None and anonymous_id is None:
        raise Invalid("no_user_anon_id", "the message needs a userId or an anonymousId")
    if kind == "track" and not fields.event:
        raise Invalid("missing_event", "a track message needs an event name")
    if kind == "group" and _text(fields.groupId) is None:
        raise Invalid("missing_group_id", "a group message needs a groupId")
    if kind == "alias" and _text(fields.previousId) is None:
        raise Invalid("missing_previous_id", "an alias message needs a previousId")


def _ids_as_text(out: dict[str, Any], fields: MessageHead) -> None:
    """Numeric ids become strings and empty ones are dropped; string ids stay as received."""
    if (
        fields.userId != ""
        and fields.anonymousId != ""
        and type(fields.userId) is not int
        and type(fields.anonymousId) is not int
        and fields.groupId is None
        and fields.previousId is None
    ):
        return  # the common case: string ids (or none), no group or alias ids
    for key, value in (
        ("userId", fields.userId),
        ("anonymousId", fields.anonymousId),
        ("groupId", fields.groupId),
        ("previousId", fields.previousId),
    ):
        if value == "":
            del out[key]
        elif isinstance(value, int):
            out[key] = str(value)


def _set_timestamps(out: dict[str, Any], fields: MessageHead, facts: RequestFacts) -> None:
    """Segment's clock-skew correction: timestamp = receivedAt - (sentAt - originalTimestamp).

    `originalTimestamp` and `sentAt` keep the sender's text; `receivedAt` and the corrected
    `timestamp` are written by cdpd in one fixed UTC format."""
    out["receivedAt"] = facts.received_at
    if fields.sentAt is not None:
        sent_ms: int | None = to_epoch_ms(fields.sentAt)
    else:
        sent_ms = facts.sent_at_ms
        if facts.sent_at is not None:
            out["sentAt"] = facts.sent_at
    original = fields.timestamp or fields.originalTimestamp
    if original is None:
        out["timestamp"] = facts.received_at
        return
    if fields.timestamp is not None:
        out["originalTimestamp"] = out["timestamp"]
    original_ms = to_epoch_ms(original)
    corrected_ms = (
        original_ms if sent_ms is None else facts.received_at_ms - (sent_ms - original_ms)
    )
    try:
        out["timestamp"] = format_ms(corrected_ms)
    except ValueError as exc:
        raise Invalid("invalid_field", f"timestamp: {exc}") from None


def _merge_request_objects(out: dict[str, Any], top: RawObject, facts: RequestFacts) -> None:
    """Merge the batch envelope's context and integrations under the message's own keys, and
    fill context.ip where Segment does: browser paths, or when context.direct is true."""
    if not (facts.context or facts.integrations or facts.client_ip):
        return  # the common case: nothing to merge, no address to fill in
    own: dict[str, Any] | None = _object(top.get("context", NULL))
    context = own
    if facts.context:
        context = {**facts.context, **(context or {})}
    if _should_fill_ip(facts, context):
        context = {**(context or {}), "ip": facts.client_ip}
    if context is not own:
        out["context"] = context
    if facts.integrations:
        out["integrations"] = {
            **facts.integrations,
            **(_object(top.get("integrations", NULL)) or {}),
        }


_TRAIT_TYPES = frozenset(("identify", "group"))


def _traits_from_context(out: dict[str, Any]) -> None:
    """RudderStack's SDKs send identify traits only as `context.traits`: when a message has no
    `traits`, those are its traits (copied, so the warehouse and every destination read them
    where Segment's put them)."""
    context = out.get("context")
    if isinstance(context, msgspec.Raw):
        if b'"traits"' not in bytes(context):
            return
        context = _object(context)
    if not isinstance(context, dict):
        return
    traits = context.get("traits", NULL)
    if isinstance(traits, msgspec.Raw) and bytes(traits).lstrip().startswith(b"{"):
        out["traits"] = traits


def _object(raw: msgspec.Raw) -> RawObject | None:
    """A nested object (already checked to be one) as a mapping of raw values; None for none."""
    return None if raw == NULL else _object_decoder.decode(raw)


def _should_fill_ip(facts: RequestFacts, context: dict[str, Any] | None) -> bool:
    if not facts.client_ip:
        return False
    if context is None:
        return facts.fill_ip
    wanted = facts.fill_ip or context.get("direct") == TRUE
    return wanted and context.get("ip", NULL) == NULL


def _reject(
    code: str, reason: str, raw: bytes | msgspec.Raw, message_id: str | None = None
) -> Rejection:
    payload = bytes(raw).decode("utf-8", errors="replace")
    return Rejection(code=code, reason=reason, message_id=message_id, payload=payload)
