"""The source schema (Segment's Schema tab): every event, property and trait a source sends,
with the types seen, counted at ingestion. Also Segment's per-source "block event".

Observing is cheap: only the top-level keys of `properties` and `traits` are read, each value
typed by its first JSON byte, without decoding the message.
"""

from __future__ import annotations

import msgspec

from cdpd.governance.chain import Block, Findings, Message, Verdict

# A value's JSON type by its first byte (numbers are told apart below).
_FIRST_BYTE_TYPES = {ord('"'): "string", ord("{"): "object", ord("["): "array"}
_FIRST_BYTE_TYPES |= {ord("t"): "boolean", ord("f"): "boolean", ord("n"): "null"}


class _Shape(msgspec.Struct):
    properties: dict[str, msgspec.Raw] | None = None
    traits: dict[str, msgspec.Raw] | None = None


_shape_decoder = msgspec.json.Decoder(_Shape)


def value_type(raw: bytes | msgspec.Raw) -> str:
    """The JSON Schema type of a raw JSON value; numbers written with a fraction or an
    exponent are `number`, others `integer`."""
    data = bytes(raw)
    found = _FIRST_BYTE_TYPES.get(data[0]) if data else None
    if found is not None:
        return found
    return "number" if any(c in data for c in b".eE") else "integer"


class SchemaObserver:
    """Counts (type, event, field, value type) for every message; field "" is the event."""

    def __init__(self, source: str) -> None:
        self._source = source

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        row = message.row
        event = row.event or ""
        source, kind, seen = self._source, row.type, row.received_at
        findings.observe((source, kind, event, "", ""), seen)
        try:
            shape = _shape_decoder.decode(row.payload)
        except msgspec.ValidationError:
            return None  # properties or traits that are not objects: nothing to observe
        for section, values in (("properties", shape.properties), ("traits", shape.traits)):
            if values:
                for name, raw in values.items():
                    findings.observe(
                        (source, kind, event, f"{section}.{name}", value_type(raw)), seen
                    )
        return None


class BlockedEvents:
    """Drops the track events a source blocks by name, with or without a plan."""

    def __init__(self, names: list[str]) -> None:
        self._names = frozenset(names)

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        row = message.row
        if row.type == "track" and row.event in self._names:
            return Block("blocked_event", f"the source blocks {row.event!r}")
        return None
