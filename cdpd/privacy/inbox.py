"""Detection at ingestion: every field path of `properties`, `traits` and `context` a source
sends, with the class its matchers suggest, gathered for the `privacy_inbox` table.

The fields a source has sent form a tree of dictionaries (one per object level), so a field
already seen costs one dictionary look-up and one attribute write (when it was last seen);
only a new field is matched, once. A field first seen empty (null, "") is matched again on the
first value it has, so a value detector gets to see it. The governance service takes the rows
about once a second (`take_rows`), like the source schema's counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from cdpd.governance.chain import Findings, Message, Verdict
from cdpd.model.rows import OutboxRow
from cdpd.privacy.matchers import Matchers, Suggestion, mask

SECTIONS = ("properties", "traits", "context")


class _Sections(msgspec.Struct):
    """Only what detection reads."""

    properties: Any = None
    traits: Any = None
    context: Any = None


_sections_decoder = msgspec.json.Decoder(_Sections)


class _Field:
    __slots__ = (
        "children",
        "first_seen",
        "last_seen",
        "path",
        "sample",
        "suggestion",
        "valued",
        "written",
    )

    def __init__(self, path: str, seen_at: str) -> None:
        self.path = path
        self.children: dict[str, _Field] = {}
        self.first_seen = self.last_seen = seen_at
        self.written = ""  # the last_seen the inbox has
        self.sample: str | None = None
        self.suggestion: Suggestion | None = None
        self.valued = False  # matched on a value that is not empty


class FieldDetector:
    """A processor of one source's chain: records each field path and its suggested class."""

    def __init__(self, source: str, matchers: Matchers, *, shares_body: bool = False) -> None:
        self._source = source
        self._matchers = matchers
        self._shares_body = shares_body
        self._roots = {section: _Field(section, "") for section in SECTIONS}

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        row = message.row
        if self._shares_body:
            body = message.body
            for section in SECTIONS:
                values = body.get(section)
                if type(values) is dict:
                    self._walk(self._roots[section], values, row.received_at, [])
        else:
            self._observe(row)
        return None

    def observe_rows(self, rows: Sequence[OutboxRow], findings: Findings) -> None:
        for row in rows:
            self._observe(row)

    def _observe(self, row: OutboxRow) -> None:
        sections = _sections_decoder.decode(row.payload)
        seen_at = row.received_at
        if type(sections.properties) is dict:
            self._walk(self._roots["properties"], sections.properties, seen_at, [])
        if type(sections.traits) is dict:
            self._walk(self._roots["traits"], sections.traits, seen_at, [])
        if type(sections.context) is dict:
            self._walk(self._roots["context"], sections.context, seen_at, [])

    def _walk(self, parent: _Field, values: dict[str, Any], seen_at: str, keys: list[str]) -> None:
        children = parent.children
        for key, value in values.items():
            field = children.get(key)
            if field is None:
                field = children[key] = _Field(f"{parent.path}.{key}", seen_at)
                self._match(field, [*keys, key], value)
            elif not field.valued and value is not None and value != "":
                self._match(field, [*keys, key], value)
            field.last_seen = seen_at
            if type(value) is dict:
                self._walk(field, value, seen_at, [*keys, key])

    def _match(self, field: _Field, keys: list[str], value: Any) -> None:
        field.valued = value is not None and value != ""
        field.sample = mask(value) if field.valued else None
        found = self._matchers.for_field(field.path, keys, value)
        if found is not None:
            field.suggestion = found
        field.written = ""  # write the row again: it changed

    def take_rows(self) -> list[tuple[object, ...]]:
        """privacy_inbox rows for the fields new or seen since the last call."""
        rows: list[tuple[object, ...]] = []
        pending = [child for root in self._roots.values() for child in root.children.values()]
        while pending:
            field = pending.pop()
            pending.extend(field.children.values())
            if field.last_seen == field.written:
                continue
            field.written = field.last_seen
            found = field.suggestion
            rows.append(
                (
                    self._source,
                    field.path,
                    found.class_ if found else None,
                    found.matcher if found else None,
                    found.on if found else None,
                    field.first_seen,
                    field.last_seen,
                    field.sample,
                )
            )
        return rows
