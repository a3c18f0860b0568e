"""A starter tracking plan from a source's observed schema, in Segment's rule format.

Every event seen becomes a rule whose properties (or traits) are the names seen with the
types seen; a property is required only when every event of its name carried it, and integers
mixed with fractions become `number`. Identify and group traits are never required (clients
send only the traits that changed). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cdpd.governance.store import SchemaField

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
RULE_TYPES = {"track": "TRACK", "page": "PAGE", "screen": "SCREEN"}
TRAIT_TYPES = {"identify": "IDENTIFY", "group": "GROUP"}


def plan(fields: Iterable[SchemaField]) -> dict[str, Any]:
    events: dict[tuple[str, str], int] = {}
    names: dict[tuple[str, str], dict[str, tuple[int, set[str]]]] = {}
    for f in fields:
        key = (f.type, f.event if f.type not in TRAIT_TYPES else "")
        if not f.field:
            events[key] = events.get(key, 0) + f.count
            continue
        section, _, name = f.field.partition(".")
        if section != ("traits" if f.type in TRAIT_TYPES else "properties"):
            continue
        count, types = names.setdefault(key, {}).get(name, (0, set()))
        names[key][name] = (count + f.count, types | {f.value_type})
    rules = []
    for (kind, event), total in sorted(events.items()):
        rule_type = RULE_TYPES.get(kind) or TRAIT_TYPES.get(kind)
        if rule_type is None:
            continue  # alias calls have no rule of their own
        seen = names.get((kind, event), {})
        section = "traits" if kind in TRAIT_TYPES else "properties"
        required = (
            [] if kind in TRAIT_TYPES else sorted(n for n, (c, _) in seen.items() if c >= total)
        )
        rule: dict[str, Any] = {"type": rule_type}
        if rule_type in ("TRACK", "PAGE", "SCREEN") and event:
            rule["key"] = event
        rule["version"] = 1
        rule["jsonSchema"] = _schema(section, seen, required)
        rules.append(rule)
    return {"rules": rules}


def _schema(
    section: str, seen: dict[str, tuple[int, set[str]]], required: list[str]
) -> dict[str, Any]:
    part: dict[str, Any] = {
        "type": "object",
        "properties": {name: {"type": _type(types)} for name, (_, types) in sorted(seen.items())},
    }
    if required:
        part["required"] = required
    schema: dict[str, Any] = {
        "$schema": DRAFT_07,
        "type": "object",
        "properties": {section: part},
    }
    if required:
        schema["required"] = [section]
    return schema


def _type(types: set[str]) -> str | list[str]:
    if "number" in types:
        types = types - {"integer"}
    ordered = sorted(types)
    return ordered[0] if len(ordered) == 1 else ordered
