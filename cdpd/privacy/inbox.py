"""Detection at ingestion: every field path of `properties`, `traits` and `context` a source
sends, with the class its matchers suggest, gathered for the `privacy_inbox` table.

The fields a source has sent form a tree (one node per field, objects holding their fields).
Each object's values are decoded raw (not built as Python values) and looked up by the tuple
of its keys, its *shape*: a shape seen before costs one dictionary look-up, and only its
object fields are looked into. A new shape is learnt field by field, and only a new field is
matched, once. A field first seen empty (null, "") is matched again on its first value, so a
value detector gets to see it (for up to `UNSETTLED_SIGHTINGS` sightings of its shape). When
last seen is kept per shape and handed to its fields when rows are taken. The governance
service takes the rows about once a second (`take_rows`), like the source schema's counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from cdpd.governance.chain import Findings, Message, Verdict
from cdpd.model.rows import OutboxRow
from cdpd.privacy.matchers import Matchers, Suggestion, mask

SECTIONS = ("properties", "traits", "context")
UNSETTLED_SIGHTINGS = 100  # after this many, a shape with empty fields stops being re-read
MAX_SHAPES = 1000  # per object: past it (keys that are data), fields are looked up one by one
# Per object: keys past it (ids used as keys, say) are not recorded, so memory and the inbox
# stay bounded whatever a source sends.
MAX_FIELDS = 1000

Raw = msgspec.Raw
Values = dict[str, Raw]


class _Sections(msgspec.Struct):
    """Only what detection reads, each object as raw values."""

    properties: Values | None = None
    traits: Values | None = None
    context: Values | None = None


_sections_decoder = msgspec.json.Decoder(_Sections)
_object_decoder = msgspec.json.Decoder(Values)
_value_decoder = msgspec.json.Decoder()


class _Field:
    __slots__ = (
        "children",
        "first_seen",
        "last_object",
        "last_seen",
        "path",
        "sample",
        "shapes",
        "suggestion",
        "valued",
        "written",
    )

    def __init__(self, path: str, seen_at: str) -> None:
        self.path = path
        self.children: dict[str, _Field] = {}
        self.shapes: dict[tuple[str, ...], _Shape] = {}  # of this object's keys
        self.first_seen = self.last_seen = seen_at
        self.written = ""  # the last_seen the inbox has
        self.sample: str | None = None
        self.suggestion: Suggestion | None = None
        self.valued = False  # matched on a value that is not empty
        # An object field's last raw value and the shape it had (a repeat is not decoded).
        self.last_object: tuple[Raw, _Shape] | None = None


class _Shape:
    """An object's set of keys, as seen: its fields, those that were objects, and when."""

    __slots__ = ("fields", "last_seen", "objects", "unsettled")

    def __init__(self, fields: list[_Field], objects: list[tuple[str, _Field]]) -> None:
        self.fields = fields
        self.objects = objects
        self.last_seen = ""
        self.unsettled = 0 if all(f.valued for f in fields) else UNSETTLED_SIGHTINGS


class FieldDetector:
    """A processor of one source's chain: records each field path and its suggested class."""

    def __init__(self, source: str, matchers: Matchers) -> None:
        self._source = source
        self._matchers = matchers
        self._roots = {section: _Field(section, "") for section in SECTIONS}
        self._properties, self._traits, self._context = self._roots.values()
        self.field_count = 0

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        self._observe(message.row)  # as received: this runs before anything changes it
        return None

    def observe_decoded(
        self, seen_at: str, properties: Any, traits: Any, context: Raw | dict[str, Any] | None
    ) -> None:
        """What the source schema's observer decoded anyway (properties and traits as values,
        context raw or as values), so the message is decoded once for both."""
        if type(properties) is dict and properties:
            self._visit_values(self._properties, properties, seen_at)
        if type(traits) is dict and traits:
            self._visit_values(self._traits, traits, seen_at)
        if isinstance(context, Raw):
            if context:
                self._visit_raw(self._context, context, seen_at)
        elif type(context) is dict and context:
            self._visit_values(self._context, context, seen_at)

    def observe_rows(self, rows: Sequence[OutboxRow], findings: Findings) -> None:
        for row in rows:
            self._observe(row)

    def _observe(self, row: OutboxRow) -> None:
        try:
            sections = _sections_decoder.decode(row.payload)
        except msgspec.ValidationError:  # a section that is not an object: nothing to see
            return
        seen_at = row.received_at
        if sections.properties:
            self._visit(self._properties, sections.properties, seen_at)
        if sections.traits:
            self._visit(self._traits, sections.traits, seen_at)
        if sections.context:
            self._visit(self._context, sections.context, seen_at)

    def _visit(self, node: _Field, values: Values, seen_at: str) -> _Shape:
        shape = node.shapes.get(tuple(values))
        if shape is None or shape.unsettled:
            shape = self._learn(node, values, seen_at)
        shape.last_seen = seen_at
        for key, field in shape.objects:
            self._visit_raw(field, values[key], seen_at)
        return shape

    def _visit_raw(self, field: _Field, raw: Raw, seen_at: str) -> None:
        """An object field's raw value: not decoded when it repeats the last one."""
        last = field.last_object
        if last is not None and raw == last[0]:
            _touch(last[1], seen_at)
            return
        try:
            nested = _object_decoder.decode(raw)
        except msgspec.ValidationError:  # not an object this time
            return
        if nested:
            field.last_object = (raw, self._visit(field, nested, seen_at))

    def _visit_values(self, node: _Field, values: dict[str, Any], seen_at: str) -> None:
        """`_visit` for an object already decoded."""
        shape = node.shapes.get(tuple(values))
        if shape is None or shape.unsettled:
            shape = self._learn(node, values, seen_at, decoded=True)
        shape.last_seen = seen_at
        for key, field in shape.objects:
            nested = values[key]
            if type(nested) is dict and nested:
                self._visit_values(field, nested, seen_at)

    def _learn(
        self, node: _Field, values: dict[str, Any], seen_at: str, *, decoded: bool = False
    ) -> _Shape:
        """Look at each field of an object; remember its shape (unless it has too many).
        `decoded`: the values are Python values, not raw JSON."""
        fields, objects = [], []
        children = node.children
        for key, raw in values.items():
            field = children.get(key)
            if field is None and len(children) >= MAX_FIELDS:
                continue
            if field is None or not field.valued:
                value = raw if decoded else _value_decoder.decode(raw)
                if field is None:
                    field = children[key] = _Field(f"{node.path}.{key}", seen_at)
                    self.field_count += 1
                    self._match(field, value)
                elif value is not None and value != "":
                    self._match(field, value)
            field.last_seen = seen_at
            fields.append(field)
            if (type(raw) is dict) if decoded else _is_object(raw):
                objects.append((key, field))
        shape = _Shape(fields, objects)
        known = node.shapes.get(tuple(values))
        if known is not None:
            known.unsettled = max(0, known.unsettled - 1) if shape.unsettled else 0
            known.objects = objects
            return known
        if len(node.shapes) < MAX_SHAPES:
            node.shapes[tuple(values)] = shape
        return shape

    def _match(self, field: _Field, value: Any) -> None:
        field.valued = value is not None and value != ""
        field.sample = mask(value) if field.valued else None
        keys = field.path.split(".")[1:]
        found = self._matchers.for_field(field.path, keys, value)
        if found is not None:
            field.suggestion = found
        field.written = ""  # write the row again: it changed

    def clear_samples(self, shows: Callable[[str], bool]) -> None:
        """Forget every sample `shows` a deleted user in (the rows written are cleared apart)."""
        pending = list(self._roots.values())
        while pending:
            node = pending.pop()
            pending.extend(node.children.values())
            if node.sample is not None and shows(node.sample):
                node.sample = None

    def take_rows(self) -> list[tuple[object, ...]]:
        """privacy_inbox rows for the fields new or seen since the last call."""
        rows: list[tuple[object, ...]] = []
        pending = list(self._roots.values())
        while pending:
            node = pending.pop()
            for shape in node.shapes.values():
                for field in shape.fields:
                    if shape.last_seen > field.last_seen:
                        field.last_seen = shape.last_seen
            pending.extend(node.children.values())
            if node.path in self._roots or node.last_seen == node.written:
                continue
            node.written = node.last_seen
            found = node.suggestion
            rows.append(
                (
                    self._source,
                    node.path,
                    found.class_ if found else None,
                    found.matcher if found else None,
                    found.on if found else None,
                    node.first_seen,
                    node.last_seen,
                    node.sample,
                )
            )
        return rows


def _touch(shape: _Shape, seen_at: str) -> None:
    """A repeated object was seen again: so were its shape and its objects' shapes."""
    shape.last_seen = seen_at
    if not shape.objects:
        return
    for _, field in shape.objects:
        if field.last_object is not None:
            _touch(field.last_object[1], seen_at)


def _is_object(raw: Raw) -> bool:
    return bytes(memoryview(raw)[:1]) == b"{"
