"""Protocols Transformations: rename events, rename or move properties and traits, for the
messages of a source that match an FQL condition. Pure.

Source-scoped transformations are a processor of the ingest chain (after Protocols, so
violations describe what was sent); destination-scoped ones change only the copy one
destination receives (`for_destination`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from cdpd.config import Transformation
from cdpd.governance.chain import Findings, Message, Verdict
from cdpd.mapping import fql

MAX_PATH_DEPTH = 4
TRAIT_MESSAGES = frozenset({"identify", "group"})
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def check(transformation: Transformation) -> list[str]:
    """What is wrong with a transformation, as `key: problem` texts (empty when usable)."""
    problems = []
    try:
        fql.parse(transformation.if_)
    except fql.FqlError as exc:
        problems.append(f"if: {exc}")
    if transformation.newEventName is None and not transformation.propertyRenames:
        problems.append("newEventName/propertyRenames: the transformation changes nothing")
    for index, rename in enumerate(transformation.propertyRenames):
        for key, path in (("oldName", rename.oldName), ("newName", rename.newName)):
            parts = path.split(".")
            if len(parts) > MAX_PATH_DEPTH or not all(parts) or "$" in path:
                problems.append(
                    f"propertyRenames[{index}].{key}: {path!r} must be a dotted path of up to "
                    f"{MAX_PATH_DEPTH} names (no array paths)"
                )
    return problems


@dataclass(frozen=True)
class Compiled:
    condition: fql.Node
    new_event_name: str | None
    renames: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]

    @classmethod
    def of(cls, transformation: Transformation) -> Compiled:
        return cls(
            condition=fql.parse(transformation.if_),
            new_event_name=transformation.newEventName,
            renames=tuple(
                (tuple(r.oldName.split(".")), tuple(r.newName.split(".")))
                for r in transformation.propertyRenames
            ),
        )

    def apply(self, body: dict[str, Any]) -> bool:
        """Transform `body` in place when it matches; True when anything changed."""
        if not fql.matches(self.condition, body):
            return False
        changed = False
        kind = body.get("type")
        if self.new_event_name is not None:
            key = "event" if kind == "track" else "name"
            if kind in ("track", "page", "screen") and body.get(key) != self.new_event_name:
                body[key] = self.new_event_name
                changed = True
        section = body.get("traits" if kind in TRAIT_MESSAGES else "properties")
        if isinstance(section, dict):
            for old, new in self.renames:
                changed = _move(section, old, new) or changed
        return changed


def _move(values: dict[str, Any], old: tuple[str, ...], new: tuple[str, ...]) -> bool:
    parent: Any = values
    for part in old[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if not isinstance(parent, dict) or old[-1] not in parent:
        return False
    value = parent.pop(old[-1])
    target = values
    for part in new[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[new[-1]] = value
    return True


class SourceTransformations:
    """The chain's processor for one source's source-scoped transformations, in config order."""

    def __init__(self, transformations: Sequence[Transformation]) -> None:
        self._compiled = tuple(Compiled.of(t) for t in transformations)

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        body = message.body
        changed = False
        for transformation in self._compiled:
            changed = transformation.apply(body) or changed
        if changed:
            message.changed()
        return None


class DestinationTransformations:
    """One destination's transformations, per source, applied to a stored payload."""

    def __init__(self, transformations: Sequence[Transformation]) -> None:
        self._by_source: dict[str, list[Compiled]] = {}
        for t in transformations:
            self._by_source.setdefault(t.source, []).append(Compiled.of(t))

    def __bool__(self) -> bool:
        return bool(self._by_source)

    def payload(self, source: str, payload: str) -> str:
        """The payload this destination receives: changed, or the stored text as it is."""
        compiled = self._by_source.get(source)
        if not compiled:
            return payload
        body = _decode(payload)
        changed = False
        for transformation in compiled:
            changed = transformation.apply(body) or changed
        return _encode(body).decode() if changed else payload


def source_scoped(transformations: Sequence[Transformation], source: str) -> list[Transformation]:
    return [t for t in transformations if t.enabled and t.source == source and not t.destination]


def destination_scoped(
    transformations: Sequence[Transformation], destination: str
) -> DestinationTransformations:
    return DestinationTransformations(
        [t for t in transformations if t.enabled and t.destination == destination]
    )
