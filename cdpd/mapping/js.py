"""JavaScript value semantics that Segment's mapping-kit relies on, so that mappings give the
answers they give at Segment: how a value becomes text (`String(v)`), truthiness, loose
comparison with `""`, `JSON.stringify`, lodash-style `get`, and `String.prototype.replace`'s
replacement patterns. `ABSENT` stands for JavaScript's `undefined`.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import msgspec


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()

# Segment's get(): split on ".", and on "[" / "]" next to a quote or a digit.
_GET_SPLIT = re.compile(r"\[(?=\"|'|\d)|\.|(?<=[\"'\d])\]+")
_INDEX = re.compile(r"0|[1-9]\d*")
_REPLACEMENT = re.compile(r"\$([$&`']|\d{1,2})")


def get(value: Any, path: str) -> Any:
    """Segment's `get(obj, path)`: `foo.bar[0].baz`, `a['b']`; `""` or `"."` is the value
    itself. As in JavaScript, walking on from a falsy value (null, 0, "", false) gives that
    value, and walking into anything without the key gives ABSENT."""
    for key in path_keys(path):
        if isinstance(value, dict):  # the common case first: an object is never falsy
            value = value.get(key, ABSENT)
        elif not truthy(value):
            return value
        else:
            value = member(value, key)
    return value


@functools.lru_cache(maxsize=4096)
def path_keys(path: str) -> tuple[str, ...]:
    """The keys a path walks (mappings name few paths, each used for every message)."""
    if path in ("", "."):
        return ()
    return tuple(k.replace('"', "").replace("'", "") for k in _GET_SPLIT.split(path) if k)


def member(value: Any, key: str) -> Any:
    """`value[key]` for JSON values (ABSENT when there is no such member)."""
    if isinstance(value, dict):
        return value.get(key, ABSENT)
    if isinstance(value, (list, str)):
        if key == "length":
            return len(value)
        if _INDEX.fullmatch(key) and int(key) < len(value):
            return value[int(key)]
    return ABSENT


def truthy(value: Any) -> bool:
    if value is ABSENT or value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0 and not math.isnan(value)
    if isinstance(value, str):
        return value != ""
    return True


def loosely_empty(value: Any) -> bool:
    """`value == ''` in JavaScript (for a value that is neither undefined nor null)."""
    if isinstance(value, bool):
        return value is False
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, (str, list)):
        return string(value) == ""
    return False


def number_text(value: float) -> str:
    """A number as JavaScript writes it: 1.0 is "1", 1e21 is "1e+21", 1.2e20 is
    "120000000000000000000", 1e-7 is "1e-7" (the shortest digits that read back the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) < 10**21:
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    mantissa, _, exponent_text = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction.rstrip("0")).lstrip("0") or "0"
    # the decimal exponent n of 0.d1d2... x 10^n, as ECMAScript's Number::toString defines it
    point = len(whole) + int(exponent_text or 0) if whole != "0" else int(exponent_text or 0)
    if whole == "0":
        point -= len(fraction) - len(fraction.lstrip("0"))
    if len(digits) <= point <= 21:
        return sign + digits + "0" * (point - len(digits))
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    exponent = point - 1
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{head}e{'+' if exponent > 0 else '-'}{abs(exponent)}"


def string(value: Any) -> str:
    """`String(value)` in JavaScript."""
    if value is ABSENT:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return number_text(value)
    if isinstance(value, list):
        return ",".join("" if item is None or item is ABSENT else string(item) for item in value)
    return "[object Object]"


def to_json(value: Any) -> Any:
    """The JSON value JSON.stringify would write: undefined members dropped, undefined array
    items written as null, integral floats as integers."""
    if isinstance(value, dict):
        return {k: to_json(value[k]) for k in _key_order(value) if value[k] is not ABSENT}
    if isinstance(value, list):
        return [None if v is ABSENT else to_json(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _key_order(value: dict[str, Any]) -> list[str]:
    """The order JavaScript keeps an object's keys in: array indexes ("0", "7") first, in
    numeric order, then the others as they were added."""
    keys = list(value)
    indexes = [k for k in keys if isinstance(k, str) and _INDEX.fullmatch(k) and int(k) < 2**32 - 1]
    if not indexes:
        return keys
    named = [k for k in keys if k not in set(indexes)]
    return sorted(indexes, key=int) + named


def entries(value: dict[str, Any]) -> list[tuple[str, Any]]:
    """`Object.entries(value)`: its members in JavaScript's key order."""
    return [(key, value[key]) for key in _key_order(value)]


def remove_undefined(value: Any) -> Any:
    """mapping-kit's removeUndefined: ABSENT members of objects go, ABSENT list items stay."""
    if isinstance(value, dict):
        return {k: remove_undefined(v) for k, v in value.items() if v is not ABSENT}
    if isinstance(value, list):
        return [remove_undefined(v) for v in value]
    return value


def stringify(value: Any) -> Any:
    """`JSON.stringify(value)`: ABSENT for undefined, else compact JSON text with numbers as
    JavaScript writes them."""
    if value is ABSENT:
        return ABSENT
    return _json_text(to_json(value))


def _json_text(value: Any) -> str:
    if isinstance(value, dict):
        members = (f"{_json_text(str(k))}:{_json_text(v)}" for k, v in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(item) for item in value) + "]"
    if isinstance(value, float):
        return number_text(value) if math.isfinite(value) else "null"
    return msgspec.json.encode(value).decode()


def parse_json(text: str) -> Any:
    """`JSON.parse(text)`; ValueError when it is not JSON."""
    try:
        return msgspec.json.decode(text.strip(" \t\n\r").encode())
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None


def replace(value: str, pattern: re.Pattern[str], replacement: str, count: int) -> str:
    """`value.replace(regexp, replacement)`: `$$`, `$&`, `` $` `` and `$'` are expanded as
    JavaScript does (the pattern has no groups, so `$1` stays as it is)."""

    def expand(found: re.Match[str]) -> str:
        def one(token: re.Match[str]) -> str:
            kind = token.group(1)
            if kind == "$":
                return "$"
            if kind == "&":
                return found.group(0)
            if kind == "`":
                return value[: found.start()]
            if kind == "'":
                return value[found.end() :]
            return token.group(0)

        return _REPLACEMENT.sub(one, replacement)

    return pattern.sub(expand, value, count=count)
