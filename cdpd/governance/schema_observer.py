"""The source schema (Segment's Schema tab): every event, property and trait a source sends,
with the types seen, counted at ingestion. Also Segment's per-source "block event".

Observing is cheap: a message is counted under its shape (event, names and their types); the
shapes of every request are summed in memory (`SchemaCounts`) and written as per-field counts
about once a second, in one writer operation (governance/service.py), so they add no statement
to the group commit of each request. A crash loses at most the last second of counts (never a
message). Only top-level properties (track, page, screen) and traits (identify, group) are
observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from cdpd.governance.chain import Block, Findings, Message, Shape, Verdict
from cdpd.model.rows import OutboxRow
from cdpd.privacy.inbox import FieldDetector

# JSON Schema type names of decoded JSON values (msgspec decodes 1.0 as a float: a number).
VALUE_TYPES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
    list: "array",
    dict: "object",
}
TRAIT_MESSAGES = frozenset({"identify", "group"})


def value_type(value: Any) -> str:
    return VALUE_TYPES[type(value)]


class _Sections(msgspec.Struct):
    """Only what the observer reads: decoding it skips the rest; context is kept raw (not
    decoded) for privacy detection."""

    properties: Any = None
    traits: Any = None
    context: msgspec.Raw = msgspec.Raw()  # empty when absent


_sections_decoder = msgspec.json.Decoder(_Sections)


class SchemaObserver:
    """Counts each message under (source, type, event, section, names, value types).

    `shares_body`: a later processor decodes the whole message anyway (a plan's check), so
    the observer reads that decoded body; otherwise it decodes only the two sections."""

    def __init__(
        self, source: str, *, shares_body: bool = False, fields: FieldDetector | None = None
    ) -> None:
        self._source = source
        self._shares_body = shares_body
        self._fields = fields  # privacy detection, fed what is decoded here

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        row = message.row
        section = "traits" if row.type in TRAIT_MESSAGES else "properties"
        fields = self._fields
        if self._shares_body:
            body = message.body
            values = body.get(section)
            if fields is not None:
                fields.observe_decoded(
                    row.received_at, body.get("properties"), body.get("traits"), body.get("context")
                )
        else:
            decoded = _sections_decoder.decode(row.payload)
            values = getattr(decoded, section)
            if fields is not None:
                fields.observe_decoded(
                    row.received_at, decoded.properties, decoded.traits, decoded.context
                )
        self._count(row, section, values, findings.shapes)
        findings.seen_at = row.received_at
        return None

    def observe_rows(self, rows: Sequence[OutboxRow], findings: Findings) -> None:
        """The same as calling the observer on each row, for a chain of nothing else: no
        message objects, one loop (the source schema is on by default, so this is the common
        case)."""
        decode, shapes, count = _sections_decoder.decode, findings.shapes, self._count
        fields = self._fields
        for row in rows:
            section = "traits" if row.type in TRAIT_MESSAGES else "properties"
            decoded = decode(row.payload)
            count(row, section, getattr(decoded, section), shapes)
            if fields is not None:
                fields.observe_decoded(
                    row.received_at, decoded.properties, decoded.traits, decoded.context
                )
        if rows:
            findings.seen_at = rows[-1].received_at

    def _count(self, row: OutboxRow, section: str, values: Any, shapes: dict[Shape, int]) -> None:
        if isinstance(values, dict) and values:
            names = tuple(values)
            types = tuple(map(VALUE_TYPES.__getitem__, map(type, values.values())))
        else:
            names = types = ()
        key = (self._source, row.type, row.event or "", section, names, types)
        shapes[key] = shapes.get(key, 0) + 1


class BlockedEvents:
    """Drops the track events a source blocks by name, with or without a plan."""

    def __init__(self, names: list[str]) -> None:
        self._names = frozenset(names)

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        row = message.row
        if row.type == "track" and row.event in self._names:
            return Block("blocked_event", f"the source blocks {row.event!r}")
        return None


FieldKey = tuple[str, str, str, str, str]  # source, type, event, field, value type


class SchemaCounts:
    """The shapes counted since the last write, with when they were first and last seen."""

    def __init__(self) -> None:
        self._pending: dict[Shape, list[Any]] = {}

    def add(self, shapes: dict[Shape, int], seen_at: str) -> None:
        pending = self._pending
        for key, count in shapes.items():
            entry = pending.get(key)
            if entry is None:
                pending[key] = [count, seen_at, seen_at]
            else:
                entry[0] += count
                entry[2] = max(entry[2], seen_at)

    def take_rows(self) -> list[tuple[object, ...]]:
        """schema_fields rows for what was counted (then forgotten): per (source, type, event,
        field, value type) a count, first and last seen; field "" counts the event itself."""
        pending, self._pending = self._pending, {}
        fields: dict[FieldKey, list[Any]] = {}
        for (source, kind, event, section, names, types), (count, first, last) in pending.items():
            keys: list[FieldKey] = [(source, kind, event, "", "")]
            keys += [
                (source, kind, event, f"{section}.{name}", value_type)
                for name, value_type in zip(names, types, strict=True)
            ]
            for key in keys:
                entry = fields.get(key)
                if entry is None:
                    fields[key] = [count, first, last]
                else:
                    entry[0] += count
                    entry[1] = min(entry[1], first)
                    entry[2] = max(entry[2], last)
        return [(*key, *counts) for key, counts in fields.items()]
