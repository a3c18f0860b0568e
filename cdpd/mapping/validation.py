"""Checks a mapping before it is used, by the rules of Segment's `mapping-kit/validate.ts` and
no others: what Segment accepts, cdpd accepts. Errors that mapping-kit finds only while mapping
(an `@merge` without a direction, a disabled Liquid tag) fail each message that reaches them,
as at Segment; `cdpd mappings test` shows them.

Each problem names its place: `where` (say `destination 'x', actions[0].mapping`) followed by
the keys leading to it, then Segment's wording: `... .mapping.data.@replace.pattern: should be a
string of length 10 or less`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdpd.mapping import js, liquid

MAX_PATTERN_LENGTH = 10
MAX_REPLACEMENT_LENGTH = 10
DIRECTIVES = (
    "@arrayPath",
    "@case",
    "@excludeWhenNull",
    "@flatten",
    "@if",
    "@json",
    "@literal",
    "@liquid",
    "@merge",
    "@path",
    "@replace",
    "@template",
    "@transform",
)

Check = Callable[[Any, str], list[str]]


def validate(mapping: Any, where: str = "mapping") -> list[str]:
    """What is wrong with `mapping` (empty when nothing is). Like Segment, the items of a list
    are not checked: an unknown directive there fails when it is mapped."""
    kind = _kind(mapping)
    if kind == "directive":
        return _directive(mapping, where)
    if kind == "object":
        return [p for key, value in mapping.items() for p in validate(value, f"{where}.{key}")]
    return []


def is_directive(value: Any) -> bool:
    """An object with an @-key whose other keys (if any) are @-keys or `_metadata`."""
    if not isinstance(value, dict) or not any(str(k).startswith("@") for k in value):
        return False
    return all(str(k).startswith("@") or k == "_metadata" for k in value)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "directive" if any(str(k).startswith("@") for k in value) else "object"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "unknown"


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _directive(mapping: dict[str, Any], where: str) -> list[str]:
    names = [key for key in mapping if str(key).startswith("@")]
    if len(names) > 1 or any(not str(k).startswith("@") and k != "_metadata" for k in mapping):
        return [f"{where}: should only have one @-prefixed key but it has {len(mapping)} keys"]
    (name,) = names
    if name not in _CHECKS:
        return [f"{where}: unknown directive {name} (known: {', '.join(DIRECTIVES)})"]
    return _CHECKS[name](mapping[name], f"{where}.{name}")


def _raw_or_directive(value: Any, where: str) -> list[str]:
    return _directive(value, where) if _kind(value) == "directive" else []


def _string_or_directive(value: Any, where: str) -> list[str]:
    kind = _kind(value)
    if kind == "directive":
        return _directive(value, where)
    if kind == "string":
        return []
    return [f"{where}: should be a string or a mapping directive but it is {_a(kind)}"]


def _object_or_directive(value: Any, where: str) -> list[str]:
    kind = _kind(value)
    if kind in ("directive", "object"):
        return validate(value, where)
    return [f"{where}: should be a object or a mapping directive but it is {_a(kind)}"]


def _string(value: Any, where: str) -> list[str]:
    kind = _kind(value)
    return [] if kind == "string" else [f"{where}: should be a string but it is {_a(kind)}"]


def _boolean(value: Any, where: str) -> list[str]:
    kind = _kind(value)
    return [] if kind == "boolean" else [f"{where}: should be a boolean but it is {_a(kind)}"]


def _length(low: int, high: int) -> Check:
    def check(value: Any, where: str) -> list[str]:
        problems = _string(value, where)
        if problems:
            return problems
        if len(value) < low:
            return [f"{where}: should be a string of length {low} or greater"]
        if len(value) > high:
            return [f"{where}: should be a string of length {high} or less"]
        return []

    return check


def _one_of(*allowed: str) -> Check:
    def check(value: Any, where: str) -> list[str]:
        problems = _string(value, where)
        if problems or value.lower() in allowed:
            return problems
        return [f"{where}: should be one of {', '.join(allowed)} but it is {value!r}"]

    return check


def _fields(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    """An object with these fields; all its members are also checked as mappings."""

    def check(value: Any, where: str) -> list[str]:
        kind = _kind(value)
        if kind != "object":
            return [f"{where}: should be an object but it is {_a(kind)}"]
        problems = []
        for key, field_check in required.items():
            if key not in value:
                problems.append(f"{where}: should have field {key!r} but it doesn't")
            else:
                problems += field_check(value[key], f"{where}.{key}")
        for key, field_check in (optional or {}).items():
            if key in value:
                problems += field_check(value[key], f"{where}.{key}")
        # Segment first checks the whole argument object as a mapping, every member of it.
        general = [p for key, inner in value.items() for p in validate(inner, f"{where}.{key}")]
        return list(dict.fromkeys(general + problems))

    return check


def _check_array_path(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{where}: should be an array but it is {_a(_kind(value))}"]
    if not value:
        return [f"{where}: should have a path (a string or a directive) and an item shape"]
    shape = validate(value[1], f"{where}[1]") if len(value) > 1 else []
    return _string_or_directive(value[0], f"{where}[0]") + shape


def _check_merge(value: Any, where: str) -> list[str]:
    problems = _fields({"objects": _array}, {"direction": _one_of("left", "right")})(value, where)
    objects = value.get("objects") if isinstance(value, dict) else None
    if isinstance(objects, list):
        for index, item in enumerate(objects):
            problems += _object_or_directive(item, f"{where}.objects[{index}]")
    return problems


def _array(value: Any, where: str) -> list[str]:
    kind = _kind(value)
    return [] if kind == "array" else [f"{where}: should be an array but it is {_a(kind)}"]


_CHECKS: dict[str, Check] = {
    "@if": _fields(
        {}, {"exists": _raw_or_directive, "then": _raw_or_directive, "else": _raw_or_directive}
    ),
    "@case": _fields({}, {"operator": _string, "value": _string_or_directive}),
    "@replace": _fields(
        {"pattern": _length(1, MAX_PATTERN_LENGTH), "value": _string_or_directive},
        {
            "replacement": _length(0, MAX_REPLACEMENT_LENGTH),
            "ignorecase": _boolean,
            "global": _boolean,
        },
    ),
    "@arrayPath": _check_array_path,
    "@path": _string_or_directive,
    "@json": _fields({"value": _raw_or_directive, "mode": _one_of("encode", "decode")}),
    "@flatten": _fields({"value": _raw_or_directive}, {"separator": _string}),
    "@merge": _check_merge,
    "@template": _string_or_directive,
    "@literal": _raw_or_directive,
    "@transform": _fields({"apply": _object_or_directive, "mapping": _object_or_directive}),
    "@excludeWhenNull": _raw_or_directive,
    "@liquid": _string,
}


def warnings(mapping: Any, where: str = "mapping") -> list[str]:
    """Directives that Segment's rules accept but that fail every message reaching them (an
    `@merge` without a direction, a disabled Liquid tag): worth a word at config load."""
    found: list[str] = []
    _warn(mapping, where, found)
    return found


def _warn(mapping: Any, where: str, found: list[str]) -> None:
    if isinstance(mapping, list):
        for index, item in enumerate(mapping):
            _warn(item, f"{where}[{index}]", found)
        return
    if not isinstance(mapping, dict):
        return
    for key, value in mapping.items():
        place = f"{where}.{key}"
        problem = _LATENT.get(key, lambda _: None)(value) if is_directive(mapping) else None
        if problem:
            found.append(f"{place}: {problem}")
        _warn(value, place, found)


def _needs(*keys: str) -> Callable[[Any], str | None]:
    def check(argument: Any) -> str | None:
        if not isinstance(argument, dict):
            return None
        missing = [key for key in keys if not js.truthy(argument.get(key, js.ABSENT))]
        return f"needs {' and '.join(repr(k) for k in missing)}" if missing else None

    return check


def _latent_if(argument: Any) -> str | None:
    if isinstance(argument, dict) and not (
        js.truthy(argument.get("exists", js.ABSENT)) or js.truthy(argument.get("blank", js.ABSENT))
    ):
        return "needs 'exists' or 'blank'"
    return None


def _latent_case(argument: Any) -> str | None:
    if isinstance(argument, dict) and argument.get("operator") not in ("lower", "upper"):
        return "operator should be 'lower' or 'upper'"
    return None


def _latent_liquid(template: Any) -> str | None:
    return liquid.check(template) if isinstance(template, str) else None


_LATENT: dict[str, Callable[[Any], str | None]] = {
    "@if": _latent_if,
    "@case": _latent_case,
    "@merge": _needs("direction", "objects"),
    "@flatten": _needs("separator"),
    "@json": _needs("mode", "value"),
    "@transform": _needs("apply", "mapping"),
    "@replace": _needs("pattern"),
    "@liquid": _latent_liquid,
}
