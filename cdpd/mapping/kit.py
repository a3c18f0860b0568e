"""Field mappings with Segment's mapping-kit directives: the shape an action sends.

A mapping is JSON: plain values stand for themselves, objects and lists are mapped member by
member, and an object with a single `@directive` key computes a value from the message:

    {"@path": "$.properties.total"}                       a value at a path (`$.` is optional)
    {"@template": "Order {{properties.order_id}}"}          text with values filled in
    {"@literal": {"@path": "not a directive"}}              a value taken as it is
    {"@if": {"exists": M, "then": M, "else": M}}            also {"blank": M, ...}
    {"@case": {"operator": "lower", "value": M}}            or "upper"
    {"@replace": {"value": M, "pattern": "-", "replacement": "_", "global": true,
                  "ignorecase": false}}                     the pattern is plain text
    {"@arrayPath": ["$.properties.products", {"sku": {"@path": "$.sku"}}]}
                                                            each item of an array, reshaped
                                                            (paths inside are the item's)
    {"@json": {"mode": "encode", "value": M}}               or "decode"
    {"@merge": {"objects": [M, M], "direction": "right"}}   later objects win ("left": earlier)
    {"@flatten": {"value": M, "separator": "."}}            nested keys joined
    {"@excludeWhenNull": M}                                 the key is left out when null

A path that leads nowhere gives no value, and a key whose value is none is left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_TEMPLATE_SLOT = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def evaluate(mapping: Any, root: Any) -> Any:
    """The value `mapping` gives for `root` (a decoded message); ABSENT when there is none."""
    if isinstance(mapping, dict):
        directive = _directive(mapping)
        if directive is not None:
            return _DIRECTIVES[directive](mapping[directive], root)
        mapped = {key: evaluate(value, root) for key, value in mapping.items()}
        return {key: value for key, value in mapped.items() if value is not ABSENT}
    if isinstance(mapping, list):
        return [item for item in (evaluate(v, root) for v in mapping) if item is not ABSENT]
    return mapping


def validate(mapping: Any, where: str = "mapping") -> list[str]:
    """What is wrong with `mapping`, each problem named by its place (`where` is its name)."""
    if isinstance(mapping, list):
        return [
            p for index, item in enumerate(mapping) for p in validate(item, f"{where}[{index}]")
        ]
    if not isinstance(mapping, dict):
        return []
    directives = [key for key in mapping if isinstance(key, str) and key.startswith("@")]
    if not directives:
        return [p for key, value in mapping.items() for p in validate(value, f"{where}.{key}")]
    if len(mapping) > 1:
        return [f"{where}: a directive ({directives[0]}) must be the only key of its object"]
    (name,) = directives
    if name not in _CHECKS:
        known = ", ".join(sorted(_CHECKS))
        return [f"{where}: unknown directive {name} (known: {known})"]
    return _CHECKS[name](mapping[name], f"{where}.{name}")


def lookup(root: Any, path: str) -> Any:
    """The value at a path like `$.properties.products[0].sku`; ABSENT when there is none."""
    value = root
    for key, index in _PATH_PART.findall(_strip_root(path)):
        if key:
            if not isinstance(value, dict) or key not in value:
                return ABSENT
            value = value[key]
        else:
            position = int(index)
            if not isinstance(value, list) or position >= len(value):
                return ABSENT
            value = value[position]
    return value


def _strip_root(path: str) -> str:
    if path in ("$", "$."):
        return ""
    return path[2:] if path.startswith("$.") else path


def _directive(mapping: dict[str, Any]) -> str | None:
    if len(mapping) == 1:
        (key,) = mapping
        if isinstance(key, str) and key.startswith("@"):
            return key
    return None


def _text(value: Any) -> str:
    if value is ABSENT or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return msgspec.json.encode(value).decode()
    return str(value)


def _is_blank(value: Any) -> bool:
    return value is ABSENT or value is None or value == ""


# -- evaluation ----------------------------------------------------------------------------------


def _path(argument: Any, root: Any) -> Any:
    return lookup(root, argument)


def _template(argument: str, root: Any) -> str:
    return _TEMPLATE_SLOT.sub(lambda slot: _text(lookup(root, slot.group(1))), argument)


def _if(argument: dict[str, Any], root: Any) -> Any:
    if "exists" in argument:
        value = evaluate(argument["exists"], root)
        holds = value is not ABSENT and value is not None
    else:
        holds = _is_blank(evaluate(argument["blank"], root))
    branch = "then" if holds else "else"
    return evaluate(argument[branch], root) if branch in argument else ABSENT


def _case(argument: dict[str, Any], root: Any) -> Any:
    value = evaluate(argument["value"], root)
    if not isinstance(value, str):
        return value
    return value.lower() if argument["operator"] == "lower" else value.upper()


def _replace(argument: dict[str, Any], root: Any) -> Any:
    value = evaluate(argument["value"], root)
    if not isinstance(value, str):
        return value
    flags = re.IGNORECASE if argument.get("ignorecase", False) else 0
    pattern = re.compile(re.escape(argument["pattern"]), flags)
    replacement = str(argument.get("replacement", ""))
    count = 0 if argument.get("global", True) else 1
    return pattern.sub(lambda _: replacement, value, count=count)


def _array_path(argument: list[Any], root: Any) -> Any:
    source, shape = argument
    items = evaluate(source, root) if isinstance(source, dict) else lookup(root, source)
    if not isinstance(items, list):
        return ABSENT
    return [evaluate(shape, item) for item in items]


def _json(argument: dict[str, Any], root: Any) -> Any:
    value = evaluate(argument["value"], root)
    if value is ABSENT:
        return ABSENT
    if argument["mode"] == "encode":
        return msgspec.json.encode(value).decode()
    if not isinstance(value, str):
        return value
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return ABSENT


def _merge(argument: dict[str, Any], root: Any) -> Any:
    objects = [evaluate(item, root) for item in argument["objects"]]
    objects = [item for item in objects if isinstance(item, dict)]
    if argument.get("direction", "right") == "left":
        objects.reverse()
    merged: dict[str, Any] = {}
    for item in objects:
        merged.update(item)
    return merged


def _flatten(argument: dict[str, Any], root: Any) -> Any:
    value = evaluate(argument["value"], root)
    if not isinstance(value, dict):
        return value
    separator = str(argument.get("separator", "."))
    flat: dict[str, Any] = {}

    def walk(prefix: str, item: Any) -> None:
        if isinstance(item, dict) and item:
            for key, inner in item.items():
                walk(f"{prefix}{separator}{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = item

    walk("", value)
    return flat


def _exclude_when_null(argument: Any, root: Any) -> Any:
    value = evaluate(argument, root)
    return ABSENT if value is None else value


_DIRECTIVES: dict[str, Callable[[Any, Any], Any]] = {
    "@path": _path,
    "@template": _template,
    "@literal": lambda argument, _: argument,
    "@if": _if,
    "@case": _case,
    "@replace": _replace,
    "@arrayPath": _array_path,
    "@json": _json,
    "@merge": _merge,
    "@flatten": _flatten,
    "@excludeWhenNull": _exclude_when_null,
}


# -- validation ----------------------------------------------------------------------------------


def _expect(kind: type | tuple[type, ...], description: str) -> Callable[[Any, str], list[str]]:
    def check(argument: Any, where: str) -> list[str]:
        return [] if isinstance(argument, kind) else [f"{where}: expected {description}"]

    return check


def _object_with(
    required: Mapping[str, str], optional: Mapping[str, str] = {}, mapped: tuple[str, ...] = ()
) -> Callable[[Any, str], list[str]]:
    """An argument object with these keys; `mapped` keys hold mappings that are checked too."""

    def check(argument: Any, where: str) -> list[str]:
        if not isinstance(argument, dict):
            return [f"{where}: expected an object with {', '.join(required)}"]
        problems = [
            f"{where}: missing {key} ({what})"
            for key, what in required.items()
            if key not in argument
        ]
        known = set(required) | set(optional)
        problems += [f"{where}: unknown key {key}" for key in argument if key not in known]
        problems += [
            p
            for key in mapped
            if key in argument
            for p in validate(argument[key], f"{where}.{key}")
        ]
        return problems

    return check


def _check_if(argument: Any, where: str) -> list[str]:
    if not isinstance(argument, dict) or ("exists" in argument) == ("blank" in argument):
        return [f"{where}: expected an object with exists or blank, and then and/or else"]
    check = _object_with(
        {}, {"exists": "", "blank": "", "then": "", "else": ""}, ("exists", "blank", "then", "else")
    )
    return check(argument, where)


def _check_choice(key: str, choices: tuple[str, ...]) -> Callable[[Any, str], list[str]]:
    def check(argument: Any, where: str) -> list[str]:
        if isinstance(argument, dict) and argument.get(key) not in choices:
            return [f"{where}.{key}: expected one of {', '.join(choices)}"]
        return []

    return check


def _all(*checks: Callable[[Any, str], list[str]]) -> Callable[[Any, str], list[str]]:
    return lambda argument, where: [p for check in checks for p in check(argument, where)]


def _check_array_path(argument: Any, where: str) -> list[str]:
    if not isinstance(argument, list) or len(argument) != 2:
        return [f"{where}: expected [path, shape]"]
    source, shape = argument
    if not isinstance(source, (str, dict)):
        return [f"{where}[0]: expected a path"]
    return validate(source, f"{where}[0]") + validate(shape, f"{where}[1]")


def _check_merge(argument: Any, where: str) -> list[str]:
    problems = _object_with({"objects": "a list of mappings"}, {"direction": ""})(argument, where)
    if problems:
        return problems
    if not isinstance(argument["objects"], list):
        return [f"{where}.objects: expected a list of mappings"]
    return _check_choice("direction", ("left", "right"))(
        {"direction": argument.get("direction", "right")}, where
    ) + validate(argument["objects"], f"{where}.objects")


_CHECKS: dict[str, Callable[[Any, str], list[str]]] = {
    "@path": _expect(str, "a path such as $.properties.total"),
    "@template": _expect(str, "a text with {{path}} slots"),
    "@literal": lambda argument, where: [],
    "@if": _check_if,
    "@case": _all(
        _object_with({"operator": "lower or upper", "value": "a mapping"}, mapped=("value",)),
        _check_choice("operator", ("lower", "upper")),
    ),
    "@replace": _object_with(
        {"value": "a mapping", "pattern": "the text to replace"},
        {"replacement": "", "global": "", "ignorecase": ""},
        ("value",),
    ),
    "@arrayPath": _check_array_path,
    "@json": _all(
        _object_with({"mode": "encode or decode", "value": "a mapping"}, mapped=("value",)),
        _check_choice("mode", ("encode", "decode")),
    ),
    "@merge": _check_merge,
    "@flatten": _object_with({"value": "a mapping"}, {"separator": ""}, ("value",)),
    "@excludeWhenNull": lambda argument, where: validate(argument, where),
}
