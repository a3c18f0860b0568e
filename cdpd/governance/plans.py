"""Tracking plans: loading Segment's rule format or Typewriter's plan.json, compiling each rule's
JSON Schema once into a validator (jsonschema-rs), and finding the rule for a message.

A plan that does not load raises `PlanError`, a config error naming the plan, the rule and what
is wrong with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema_rs
import msgspec

from cdpd.settings import ConfigError

RuleType = Literal["COMMON", "TRACK", "IDENTIFY", "GROUP", "PAGE", "SCREEN"]
KEYED_TYPES = ("TRACK", "PAGE", "SCREEN")
# Where a rule's planned names live in the message it validates.
SECTIONS: dict[str, str] = {
    "TRACK": "properties",
    "PAGE": "properties",
    "SCREEN": "properties",
    "IDENTIFY": "traits",
    "GROUP": "traits",
}


class PlanError(ConfigError):
    """A tracking plan that cannot be used; the message names the plan and the rule."""


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=False, kw_only=True):
    """One rule as the Public API lists it; `json_schema` is accepted for `jsonSchema`."""

    type: RuleType
    key: str | None = None
    version: int = 1
    jsonSchema: dict[str, Any] | None = None
    json_schema: dict[str, Any] | None = None


class RulesDocument(msgspec.Struct, frozen=True, kw_only=True):
    rules: list[msgspec.Raw]


@dataclass(frozen=True)
class Rule:
    """A compiled rule: its validator, and the names its schema plans for the section
    (`properties` or `traits`) it governs."""

    type: str
    key: str | None
    version: int
    schema: dict[str, Any]
    validator: Any  # a jsonschema_rs validator: compiled once, used for every message
    planned: frozenset[str]

    @property
    def section(self) -> str | None:
        return SECTIONS.get(self.type)


@dataclass(frozen=True)
class Plan:
    name: str
    # (type, key) -> the rule's versions, oldest first; key is "" for unkeyed rules.
    rules: Mapping[tuple[str, str], tuple[Rule, ...]] = field(default_factory=dict)

    def rule(self, rule_type: str, key: str | None, version: object = None) -> Rule | None:
        """The rule for a message: the version it asks for, else the oldest."""
        versions = self.rules.get((rule_type, key or ""))
        if not versions:
            return None
        if type(version) is int:
            for rule in versions:
                if rule.version == version:
                    return rule
        return versions[0]

    def has(self, rule_type: str, key: str | None) -> bool:
        return (rule_type, key or "") in self.rules

    def track_events(self) -> list[str]:
        return sorted(key for (kind, key) in self.rules if kind == "TRACK")


def load(name: str, path: str | Path) -> Plan:
    """Read and compile a plan file of either format."""
    origin = f"tracking plan {name!r} ({path})"
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise PlanError(f"{origin}: cannot read the file: {exc.strerror}") from None
    try:
        document = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise PlanError(f"{origin}: not valid JSON: {exc}") from None
    return compile_document(name, document, origin=origin)


def compile_document(name: str, document: object, *, origin: str = "<plan>") -> Plan:
    if not isinstance(document, dict) or "rules" not in document:
        raise PlanError(
            f"{origin}: expected an object with a `rules` list (Segment's rule format) "
            "or Typewriter's plan.json"
        )
    raw_rules = document["rules"]
    if isinstance(raw_rules, dict):
        specs = list(_typewriter_rules(raw_rules, origin))
    elif isinstance(raw_rules, list):
        specs = [_rule_spec(index, raw, origin) for index, raw in enumerate(raw_rules)]
    else:
        raise PlanError(f"{origin}: `rules` must be a list (or Typewriter's rules object)")
    return Plan(name=name, rules=_index(specs, origin))


def _rule_spec(index: int, raw: object, origin: str) -> tuple[str, RuleSpec]:
    where = f"rules[{index}]"
    if isinstance(raw, dict):
        kind, key = raw.get("type"), raw.get("key")
        if kind is not None:
            where += f" ({kind}" + (f" {key!r})" if key else ")")
    try:
        spec = msgspec.convert(raw, RuleSpec)
    except msgspec.ValidationError as exc:
        raise PlanError(f"{origin}: {where}: {_explain(str(exc))}") from None
    return where, spec


def _typewriter_rules(rules: dict[str, Any], origin: str) -> Iterable[tuple[str, RuleSpec]]:
    """Typewriter's plan.json: `rules.events` (name, version, rules), plus the `global`,
    `identify` and `group` schemas."""
    unkeyed: tuple[tuple[RuleType, str], ...] = (
        ("COMMON", "global"),
        ("IDENTIFY", "identify"),
        ("GROUP", "group"),
    )
    for kind, name in unkeyed:
        schema = rules.get(name)
        if schema:
            where = f"rules.{name}"
            if not isinstance(schema, dict):
                raise PlanError(f"{origin}: {where}: expected a JSON Schema object")
            yield where, RuleSpec(type=kind, jsonSchema=schema)
    events = rules.get("events") or []
    if not isinstance(events, list):
        raise PlanError(f"{origin}: rules.events: expected a list")
    for index, event in enumerate(events):
        where = f"rules.events[{index}]"
        if not isinstance(event, dict) or not isinstance(event.get("name"), str):
            raise PlanError(f"{origin}: {where}: expected an object with a `name`")
        where += f" ({event['name']!r})"
        schema, version = event.get("rules") or {}, event.get("version", 1)
        if not isinstance(schema, dict) or type(version) is not int:
            raise PlanError(f"{origin}: {where}: `rules` must be an object, `version` an integer")
        yield where, RuleSpec(type="TRACK", key=event["name"], version=version, jsonSchema=schema)


def _index(
    specs: list[tuple[str, RuleSpec]], origin: str
) -> dict[tuple[str, str], tuple[Rule, ...]]:
    found: dict[tuple[str, str], list[Rule]] = {}
    for where, spec in specs:
        rule = _compile(where, spec, origin)
        versions = found.setdefault((rule.type, rule.key or ""), [])
        if any(other.version == rule.version for other in versions):
            raise PlanError(f"{origin}: {where}: version {rule.version} is given twice")
        versions.append(rule)
    return {k: tuple(sorted(v, key=lambda r: r.version)) for k, v in found.items()}


def _compile(where: str, spec: RuleSpec, origin: str) -> Rule:
    if spec.type in KEYED_TYPES:
        if spec.type == "TRACK" and not spec.key:
            raise PlanError(f"{origin}: {where}: a TRACK rule needs a `key`, the event name")
    elif spec.key:
        raise PlanError(f"{origin}: {where}: a {spec.type} rule has no `key`")
    schema = spec.jsonSchema if spec.jsonSchema is not None else spec.json_schema
    if schema is None:
        schema = {}
    try:
        # Without `$schema`, draft-07, as Segment assumes.
        if "$schema" in schema:
            validator = jsonschema_rs.validator_for(schema)
        else:
            validator = jsonschema_rs.Draft7Validator(schema)
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        detail = str(exc).splitlines()[0]
        raise PlanError(
            f"{origin}: {where}: jsonSchema is not a valid JSON Schema: {detail}"
        ) from None
    return Rule(
        type=spec.type,
        key=spec.key or None,
        version=spec.version,
        schema=schema,
        validator=validator,
        planned=_planned_names(schema, SECTIONS.get(spec.type)),
    )


def _planned_names(schema: dict[str, Any], section: str | None) -> frozenset[str]:
    if section is None:
        return frozenset()
    top = schema.get("properties")
    part = top.get(section) if isinstance(top, dict) else None
    names = part.get("properties") if isinstance(part, dict) else None
    return frozenset(names) if isinstance(names, dict) else frozenset()


def _explain(message: str) -> str:
    text, sep, where = message.rpartition(" - at `$")
    if not sep:
        return message
    return f"{where.rstrip('`').lstrip('.')}: {text}"


def load_all(plans: Iterable[Any]) -> dict[str, Plan]:
    """Every `[[tracking_plans]]` entry, compiled; the first that fails raises PlanError."""
    return {entry.name: load(entry.name, entry.path) for entry in plans}
