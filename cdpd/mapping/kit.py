"""Field mappings with Segment's mapping-kit directives: the shape an action sends, computed
exactly as `@segment/actions-core` computes it (`packages/core/src/mapping-kit/index.ts`).

A mapping is JSON: plain values stand for themselves, objects and lists are mapped member by
member, and an object with a single `@directive` key computes a value from the message:

    {"@path": "$.properties.total"}                    a value at a path (`$.` is optional)
    {"@template": "Order {{properties.order_id}}"}       text with values filled in
    {"@literal": M}                                      M mapped (directives inside too)
    {"@if": {"exists": M, "then": M, "else": M}}         or "blank": M (then: M is not blank)
    {"@case": {"operator": "lower", "value": M}}         or "upper"
    {"@replace": {"value": M, "pattern": "-", "replacement": "_", "global": true,
                  "ignorecase": false, "pattern2": "x", "replacement2": "y"}}
    {"@arrayPath": ["$.properties.products", {"sku": {"@path": "$.sku"}}]}
    {"@json": {"mode": "encode", "value": M}}            or "decode"
    {"@merge": {"objects": [M, M], "direction": "right"}}
    {"@flatten": {"value": M, "separator": ".", "omitArrays": false}}
    {"@transform": {"apply": {...}, "mapping": {...}}}   map the message, then map that
    {"@excludeWhenNull": M}                              the key left out when M is null
    {"@liquid": "Hello {{ traits.name | capitalize }}"}  a Liquid template (see liquid.py)

A value that is "undefined" in mapping-kit is ABSENT here, and a key whose value is ABSENT is
left out (an ABSENT list item becomes null, as JSON.stringify writes it). A mapping whose keys
include `__segment_internal_directive` is Segment's root-level directive form: the other keys
become the `mapping` of the directive held there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from cdpd.mapping import js, liquid, placeholders
from cdpd.mapping.errors import MappingError
from cdpd.mapping.js import ABSENT
from cdpd.mapping.validation import (
    MAX_PATTERN_LENGTH,
    MAX_REPLACEMENT_LENGTH,
    is_directive,
    validate,
    warnings,
)

__all__ = [
    "ABSENT",
    "MappingError",
    "evaluate",
    "lookup",
    "root_form",
    "to_fields",
    "transform",
    "validate",
    "warnings",
]

ROOT_DIRECTIVE_KEY = "__segment_internal_directive"


def transform(mapping: Any, data: Any) -> Any:
    """Segment's `transform(mapping, data)`: check the mapping, then map `data` (an object);
    MappingError when mapping-kit would throw. The result is JSON (ABSENT when there is none)."""
    return js.to_json(_mapped(mapping, data))


def _mapped(mapping: Any, data: Any) -> Any:
    """transform() as mapping-kit returns it: ABSENT members of objects removed, ABSENT items
    of lists kept (JSON.stringify writes them as null only when the result is sent)."""
    if not isinstance(data, dict):
        raise MappingError(f"data must be an object, got {_type(data)}")
    mapping = root_form(mapping)
    problems = validate(mapping, "mapping")
    if problems:
        raise MappingError("; ".join(problems))
    return js.remove_undefined(_resolve(mapping, data))


def root_form(mapping: Any) -> Any:
    """The mapping to evaluate: Segment's root-level directive form made into one directive
    whose `mapping` is every other key; any other mapping as it is."""
    if not isinstance(mapping, dict) or ROOT_DIRECTIVE_KEY not in mapping:
        return mapping
    root = mapping[ROOT_DIRECTIVE_KEY]
    if not isinstance(root, dict) or len(root) != 1:
        raise MappingError("The root mapping must only have a single directive object")
    ((name, argument),) = root.items()
    if not isinstance(argument, dict):
        raise MappingError("The root directive must be an object")
    others = {key: value for key, value in mapping.items() if key != ROOT_DIRECTIVE_KEY}
    return {name: {**argument, "mapping": others}}


def evaluate(mapping: Any, root: Any) -> Any:
    """The value `mapping` gives for `root`, as JSON (ABSENT when there is none). MappingError
    when mapping-kit would throw for this message (a directive's argument of the wrong kind)."""
    return js.to_json(_resolve(mapping, root))


def _resolve(mapping: Any, root: Any) -> Any:
    """mapping-kit's resolve(): ABSENT (undefined) stays where it is, as in JavaScript (an
    @merge of {"x": undefined} clears x), until the result is written as JSON."""
    if isinstance(mapping, dict):
        if len(mapping) == 1:  # the common case: one key, a directive or not
            name = next(iter(mapping))
            directive_here = isinstance(name, str) and name.startswith("@")
        else:
            directive_here = is_directive(mapping)
            name = next((key for key in mapping if key.startswith("@")), "")
        if directive_here:
            directive = _DIRECTIVES.get(name)
            if directive is None:
                raise MappingError(f"{name} is not a valid directive")
            return directive(mapping[name], root)
        return {key: _resolve(value, root) for key, value in mapping.items()}
    if isinstance(mapping, list):
        return [_resolve(item, root) for item in mapping]
    return mapping


def to_fields(value: Any) -> dict[str, Any]:
    """An action's mapped fields, from what `evaluate` gives (ABSENT: no fields)."""
    if value is ABSENT:
        return {}
    if not isinstance(value, dict):
        raise MappingError(f"the mapping gives {_type(value)}, not an object of fields")
    return value


def lookup(root: Any, path: str) -> Any:
    """The value at a path like `$.properties.products[0].sku` (Segment's `@path`)."""
    return js.get(root, _strip_root(path))


@functools.lru_cache(maxsize=4096)
def _strip_root(path: str) -> str:
    return path.replace("$.", "", 1)


def _type(value: Any) -> str:
    if value is ABSENT:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _object(argument: Any, name: str) -> dict[str, Any]:
    if not isinstance(argument, dict):
        raise MappingError(f"{name} requires an object")
    return argument


def _string_argument(name: str, argument: Any, root: Any) -> str:
    value = _resolve(argument, root)
    if not isinstance(value, str):
        raise MappingError(f"{name}: expected string, got {_type(value)}")
    return value


# -- the directives ------------------------------------------------------------------------------


def _path(argument: Any, root: Any) -> Any:
    if isinstance(argument, str):
        return lookup(root, argument)
    return lookup(root, _string_argument("@path", argument, root))


def _template(argument: Any, root: Any) -> str:
    return placeholders.render(_string_argument("@template", argument, root), root)


def _if(argument: Any, root: Any) -> Any:
    options = _object(argument, "@if")
    exists, blank = options.get("exists", ABSENT), options.get("blank", ABSENT)
    if not js.truthy(exists) and not js.truthy(blank):
        raise MappingError('@if requires an "exists" key or a "blank" key')
    if exists is not ABSENT:
        value = _resolve(exists, root)
        holds = value is not ABSENT and value is not None
    else:
        # Segment's rule: "then" when the value is there and not blank.
        value = _resolve(blank, root)
        holds = value is not ABSENT and value is not None and not js.loosely_empty(value)
    if holds and options.get("then", ABSENT) is not ABSENT:
        return _resolve(options["then"], root)
    if not holds and js.truthy(options.get("else", ABSENT)):
        return _resolve(options["else"], root)
    return ABSENT


def _case(argument: Any, root: Any) -> Any:
    options = _object(argument, "@case")
    if not js.truthy(options.get("operator", ABSENT)):
        raise MappingError('@case requires a "operator" key')
    if not js.truthy(options.get("value", ABSENT)):
        return ABSENT
    value = _resolve(options["value"], root)
    if not isinstance(value, str):
        return value
    if options["operator"] == "lower":
        return value.lower()
    if options["operator"] == "upper":
        return value.upper()
    raise MappingError('operator key should have a value of "lower" or "upper"')


def _replace(argument: Any, root: Any) -> Any:
    options = _object(argument, "@replace")
    pattern = options.get("pattern", ABSENT)
    if not js.truthy(pattern):
        raise MappingError('@replace requires a "pattern" key')
    replacement = _default(options.get("replacement", ABSENT), "")
    ignorecase = _default(options.get("ignorecase", ABSENT), False)
    is_global = _default(options.get("global", ABSENT), True)
    if not js.truthy(options.get("value", ABSENT)):
        return ABSENT
    value = _resolve(options["value"], root)
    if isinstance(value, (bool, int, float)):
        value = js.string(value)
    if not (
        isinstance(value, str)
        and isinstance(pattern, str)
        and isinstance(replacement, str)
        and isinstance(ignorecase, bool)
        and isinstance(is_global, bool)
    ):
        return ""
    value = _replace_once(value, pattern, replacement, ignorecase, is_global)
    pattern2 = options.get("pattern2", ABSENT)
    if js.truthy(pattern2):
        replacement2 = _default(options.get("replacement2", ABSENT), "")
        if isinstance(pattern2, str) and isinstance(replacement2, str):
            value = _replace_once(value, pattern2, replacement2, ignorecase, is_global)
    return value


def _default(value: Any, default: Any) -> Any:
    return default if value is ABSENT or value is None else value


def _replace_once(value: str, pattern: str, replacement: str, ignorecase: bool, every: bool) -> str:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise MappingError(
            f'@replace requires a "pattern" less than {MAX_PATTERN_LENGTH} characters'
        )
    if len(replacement) > MAX_REPLACEMENT_LENGTH:
        raise MappingError(
            f'@replace requires a "replacement" less than {MAX_REPLACEMENT_LENGTH} characters'
        )
    compiled = re.compile(re.escape(pattern), re.IGNORECASE if ignorecase else 0)
    return js.replace(value, compiled, replacement, 0 if every else 1)


def _array_path(argument: Any, root: Any) -> Any:
    if not isinstance(argument, list):
        raise MappingError(f"@arrayPath expected array, got {_type(argument)}")
    source = argument[0] if argument else ABSENT
    shape = argument[1] if len(argument) > 1 else ABSENT
    items = lookup(root, source) if isinstance(source, str) else _resolve(source, root)
    if isinstance(items, (dict, list)) and isinstance(shape, dict) and shape:
        return [_resolve(shape, item) for item in (items if isinstance(items, list) else [items])]
    return items


def _json(argument: Any, root: Any) -> Any:
    options = _object(argument, "@json")
    if not js.truthy(options.get("mode", ABSENT)):
        raise MappingError('@json requires a "mode" key')
    if not js.truthy(options.get("value", ABSENT)):
        raise MappingError('@json requires a "value" key')
    value = _resolve(options["value"], root)
    if options["mode"] == "encode":
        return js.stringify(value)
    if options["mode"] != "decode":
        return ABSENT
    if not isinstance(value, str):
        return value
    try:
        return js.parse_json(value)
    except ValueError:
        return value


def _merge(argument: Any, root: Any) -> Any:
    options = _object(argument, "@merge")
    if not js.truthy(options.get("direction", ABSENT)):
        raise MappingError('@merge requires a "direction" key')
    direction = _resolve(options["direction"], root)
    objects = options.get("objects", ABSENT)
    if not js.truthy(objects):
        raise MappingError('@merge requires a "objects" key')
    if not isinstance(objects, list):
        raise MappingError(f"@merge: expected opts.array, got {_type(objects)}")
    resolved = [_resolve(item, root) for item in objects]
    if direction == "left":
        resolved.reverse()
    merged: dict[str, Any] = {}
    for item in resolved:  # Object.assign: strings and arrays give their items by index
        if isinstance(item, dict):
            merged.update(item)
        elif isinstance(item, (list, str)):
            merged.update((str(index), value) for index, value in enumerate(item))
    return merged


def _flatten(argument: Any, root: Any) -> Any:
    options = _object(argument, "@flatten")
    if not js.truthy(options.get("separator", ABSENT)):
        raise MappingError('@flatten requires a "separator" key')
    separator = _resolve(options["separator"], root)
    if not isinstance(separator, str):
        raise MappingError("@flatten requires a string separator")
    value = _resolve(options.get("value", ABSENT), root)
    return flatten(value, "", separator, js.truthy(options.get("omitArrays", ABSENT)))


def flatten(value: Any, prefix: str, separator: str, omit_arrays: bool) -> dict[str, Any]:
    """mapping-kit's flattenObject: nested objects (and arrays, unless omitted) become one
    object with joined keys; anything else is `{prefix: value}`."""
    if isinstance(value, dict) or (isinstance(value, list) and not omit_arrays):
        entries = js.entries(value) if isinstance(value, dict) else enumerate(value)
        flat: dict[str, Any] = {}
        for key, inner in entries:
            flat.update(
                flatten(
                    inner,
                    f"{prefix}{separator}{key}" if prefix else str(key),
                    separator,
                    omit_arrays,
                )
            )
        return flat
    return {prefix: value}


def _transform(argument: Any, root: Any) -> Any:
    options = _object(argument, "@transform")
    if not js.truthy(options.get("mapping", ABSENT)):
        raise MappingError('@transform requires a "mapping" key')
    if not js.truthy(options.get("apply", ABSENT)):
        raise MappingError('@transform requires a "apply" key')
    if not isinstance(options["apply"], dict):
        raise MappingError('@transform "apply" key should be an object')
    return _resolve(options["mapping"], _mapped(options["apply"], root))


def _exclude_when_null(argument: Any, root: Any) -> Any:
    value = _resolve(argument, root)
    return ABSENT if value is None else _without_nulls(value)


def _without_nulls(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {key: ABSENT if inner is None else _without_nulls(inner) for key, inner in value.items()}


def _liquid(argument: Any, root: Any) -> Any:
    if not isinstance(argument, str):
        raise MappingError("liquid template value must be a string")
    return liquid.render(argument, root)


_DIRECTIVES: dict[str, Callable[[Any, Any], Any]] = {
    "@path": _path,
    "@template": _template,
    "@literal": _resolve,
    "@if": _if,
    "@case": _case,
    "@replace": _replace,
    "@arrayPath": _array_path,
    "@json": _json,
    "@merge": _merge,
    "@flatten": _flatten,
    "@transform": _transform,
    "@excludeWhenNull": _exclude_when_null,
    "@liquid": _liquid,
}
