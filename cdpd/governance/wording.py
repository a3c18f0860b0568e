"""Violations in Segment's words: jsonschema-rs errors turned into gojsonschema's English texts.

Segment validates with gojsonschema and shows its default-locale strings; `type` is that
library's error type in title case (`required` -> `Required`, `invalid_type` -> `Invalid Type`).
A field is the dotted path from the message root (`properties.order_id`), the root `(root)`.
Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


class Violation(msgspec.Struct, frozen=True, gc=False):
    """One violation as `context.protocols.violations` holds it."""

    type: str
    field: str
    description: str


def field_path(path: list[str | int] | tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) if path else "(root)"


def json_type(value: object) -> str:
    """gojsonschema's name for a value's type: whole numbers are `integer`."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def violations(error: Any, schema: dict[str, Any]) -> Iterator[Violation]:
    """The violations one jsonschema-rs error stands for (one, except for additional
    properties, which gojsonschema reports one by one)."""
    kind = error.kind.name
    details = error.kind.as_dict()
    path = list(error.instance_path)
    field = field_path(path)
    if kind == "required":
        full = field_path([*path, details["property"]])
        yield Violation("Required", full, f"{full} is required")
    elif kind == "additionalProperties":
        for name in details.get("unexpected", []):
            yield Violation(
                "Additional Property Not Allowed",
                field,
                f"Additional property {name} is not allowed",
            )
    elif kind == "type":
        expected = _schema_at(schema, list(error.schema_path))
        yield Violation(
            "Invalid Type",
            field,
            f"Invalid type. Expected: {_types(expected, details)}, given: "
            f"{json_type(error.instance)}",
        )
    else:
        gojson_type, text = _describe(kind, details, field, error)
        yield Violation(gojson_type, field, text)


def _types(expected: object, details: dict[str, Any]) -> str:
    """A single type as is; several as gojsonschema prints them: `[string,null]`, in the
    schema's order."""
    if not isinstance(expected, list | str):
        expected = details.get("types") or []
    if isinstance(expected, str):
        return expected
    return expected[0] if len(expected) == 1 else "[" + ",".join(expected) + "]"


def _schema_at(schema: Any, path: list[str | int]) -> object:
    node = schema
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(kind: str, d: dict[str, Any], field: str, error: Any) -> tuple[str, str]:
    """(gojsonschema error type in title case, its English description)."""
    limit = _number(d.get("limit"))
    table: dict[str, tuple[str, str]] = {
        "enum": (
            "Enum",
            f"{field} must be one of the following: "
            + ", ".join(_encode(o).decode() for o in d.get("options") or []),
        ),
        "const": ("Const", f"{field} does not match: {_encode(d.get('expected_value')).decode()}"),
        "pattern": ("Pattern", f"Does not match pattern '{d.get('pattern')}'"),
        "format": ("Format", f"Does not match format '{d.get('format')}'"),
        "minLength": ("String Gte", f"String length must be greater than or equal to {limit}"),
        "maxLength": ("String Lte", f"String length must be less than or equal to {limit}"),
        "minimum": ("Number Gte", f"Must be greater than or equal to {limit}"),
        "exclusiveMinimum": ("Number Gt", f"Must be greater than {limit}"),
        "maximum": ("Number Lte", f"Must be less than or equal to {limit}"),
        "exclusiveMaximum": ("Number Lt", f"Must be less than {limit}"),
        "multipleOf": ("Multiple Of", f"Must be a multiple of {_number(d.get('multiple_of'))}"),
        "minItems": ("Array Min Items", f"Array must have at least {limit} items"),
        "maxItems": ("Array Max Items", f"Array must have at most {limit} items"),
        "minProperties": ("Array Min Properties", f"Must have at least {limit} properties"),
        "maxProperties": ("Array Max Properties", f"Must have at most {limit} properties"),
        "uniqueItems": ("Unique", f"array items{_duplicate_pair(error.instance)} must be unique"),
        "contains": ("Contains", "At least one of the items must match"),
        "anyOf": ("Number Any Of", "Must validate at least one schema (anyOf)"),
        "oneOfNotValid": ("Number One Of", "Must validate one and only one schema (oneOf)"),
        "oneOfMultipleValid": ("Number One Of", "Must validate one and only one schema (oneOf)"),
        "not": ("Number Not", "Must not validate the schema (not)"),
        "falseSchema": ("False", "False always fails validation"),
        "additionalItems": ("Array No Additional Items", "No additional items allowed on array"),
    }
    found = table.get(kind)
    if found is not None:
        return found
    return kind[:1].upper() + kind[1:], str(error.message)


def _duplicate_pair(items: object) -> str:
    if not isinstance(items, list):
        return ""
    seen: dict[bytes, int] = {}
    for index, item in enumerate(items):
        key = _encode(item)
        if key in seen:
            return f"[{seen[key]},{index}]"
        seen[key] = index
    return ""
