"""Values as Customer.io's Track API takes them: Unix-second times, identifiers, event ids that
are ULIDs, and the reason in an error answer. Pure functions."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import msgspec

from cdpd.model.timestamps import parse_ms

_ISO_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}((T\d{2}:\d{2}(:\d{2})?)(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?)?$"
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
_decoder = msgspec.json.Decoder()


def event_ulid(event_id: str, timestamp: Any) -> str:
    """Customer.io drops a second event with the same id, and takes only ULIDs as ids. An id
    that is a ULID is kept; any other (a messageId is usually a UUID) becomes one made from it:
    the event's time in milliseconds as the ULID's time, the first 80 bits of the id's SHA-256
    as its randomness. A resent message so carries the same id every time."""
    if _ULID.match(event_id):
        return event_id
    millis = _epoch_ms(timestamp) & (2**48 - 1)
    randomness = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:10], "big")
    value = (millis << 80) | randomness
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _epoch_ms(timestamp: Any) -> int:
    if isinstance(timestamp, str):
        try:
            return max(0, parse_ms(timestamp))
        except ValueError:
            return 0
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        return max(0, int(timestamp * 1000 if timestamp < 1e11 else timestamp))
    return 0


def identifiers(person: str) -> dict[str, str]:
    """How Customer.io finds a person: `cio_<id>`, an email, or an id."""
    if person.startswith("cio_"):
        return {"cio_id": person.removeprefix("cio_")}
    if _EMAIL.match(person):
        return {"email": person}
    return {"id": person}


def unix_s(value: Any) -> Any:
    """An ISO-8601 time as Unix seconds; anything else as it is."""
    if isinstance(value, str) and _ISO_DATE.match(value):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp())
    return value


def convert_timestamps(value: dict[str, Any]) -> dict[str, Any]:
    """ISO-8601 strings, in nested objects too, as Unix seconds (Segment's convert_timestamp)."""
    return {
        key: convert_timestamps(item) if isinstance(item, dict) else unix_s(item)
        for key, item in value.items()
    }


def reason_of(body: bytes) -> str | None:
    """Customer.io's own words in an error answer: v1's `meta.error`, v2's `errors[]`."""
    try:
        decoded = _decoder.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(decoded, dict):
        return None
    meta = decoded.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("error"), str):
        return str(meta["error"])
    errors = decoded.get("errors")
    if isinstance(errors, list) and errors:
        texts = [str(e.get("message") or e.get("reason")) for e in errors if isinstance(e, dict)]
        return "; ".join(texts) or None
    return None
