"""What makes python-liquid render as liquidjs (the engine of Segment's `@liquid`) does: the
message's values dressed as JavaScript values (an object is `[object Object]` as text, a list
its items run together, an integral number has no `.0`), and liquidjs's own filters where
python-liquid has none or a different one (`json`, `slugify`, `divided_by`, `round`, ...).
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any
from urllib.parse import quote

import msgspec

from cdpd.mapping import js


class JsObject(dict[str, Any]):
    def __str__(self) -> str:
        return "[object Object]"


class JsArray(list[Any]):
    def __str__(self) -> str:
        return "".join(text(item) for item in self)


def dress(value: Any) -> Any:
    """A decoded JSON value with objects, arrays and integral numbers as liquidjs sees them."""
    if isinstance(value, dict):
        return JsObject((k, dress(v)) for k, v in value.items() if v is not js.ABSENT)
    if isinstance(value, list):
        return JsArray(None if v is js.ABSENT else dress(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def text(value: Any) -> str:
    """liquidjs's stringify: how a value is output and how string filters read it."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        return "".join(text(item) for item in value)
    if isinstance(value, (bool, int, float)):
        return js.number_text(value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def number(value: Any) -> float:
    """JavaScript's Number(value)."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped == "":
            return 0.0
        try:
            return (
                float(stripped)
                if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", stripped, re.I)
                else math.nan
            )
        except ValueError:
            return math.nan
    if isinstance(value, list):
        return number(text(value)) if len(value) <= 1 else math.nan
    return math.nan


def to_number(value: Any) -> float:
    """liquidjs's toNumber for math filters: `+value || 0`."""
    found = number(value)
    return 0.0 if math.isnan(found) else found


def _result(value: float) -> float | int:
    return (
        int(value) if math.isfinite(value) and value.is_integer() and abs(value) < 2**53 else value
    )


def _json(value: Any, space: Any = 0) -> str:
    text: str = js.stringify(_plain(value))
    indent = int(number(space)) if number(space) == number(space) else 0
    return msgspec.json.format(text, indent=indent) if indent > 0 else text


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_plain(inner) for inner in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return None  # an undefined variable


def _divided_by(value: Any, divisor: Any, integer_arithmetic: Any = False) -> float | int:
    dividend, by = to_number(value), to_number(divisor)
    if by == 0:
        quotient = (
            math.nan if dividend == 0 or math.isnan(dividend) else math.copysign(math.inf, dividend)
        )
    else:
        quotient = dividend / by
    return _result(
        math.floor(quotient) if integer_arithmetic and math.isfinite(quotient) else quotient
    )


def _round(value: Any, places: Any = 0) -> float | int:
    amp = 10 ** to_number(places)
    scaled = to_number(value) * amp * (1 + 2.220446049250313e-16)
    if not math.isfinite(scaled):
        return scaled
    return _result(math.floor(scaled + 0.5) / amp)


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-16-le")) // 2  # JavaScript counts UTF-16 units
    return len(value) if isinstance(value, list) else 0


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, str)) and value else ""


def _last(value: Any) -> Any:
    return value[-1] if isinstance(value, (list, str)) and value else ""


def _array(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _encode_uri_component(value: str) -> str:
    return quote(value, safe="-_.!~*'()")


def _cgi_escape(value: Any) -> str:
    encoded = _encode_uri_component(text(value)).replace("%20", "+")
    return re.sub(r"[!'()*]", lambda c: f"%{ord(c.group(0)):X}", encoded)


def _uri_escape(value: Any) -> str:
    encoded = quote(text(value), safe=";,/?:@&=+$-_.!~*'()#")
    return encoded.replace("%5B", "[").replace("%5D", "]")


def _slugify(value: Any, mode: Any = "default", cased: Any = False) -> str:
    slug = text(value)
    if mode == "latin":
        slug = "".join(
            c for c in unicodedata.normalize("NFD", slug) if not unicodedata.combining(c)
        )
    if mode in ("default", "latin"):
        slug = _runs(
            slug, lambda c: unicodedata.category(c)[0] in "ML" or unicodedata.category(c) == "Nd"
        )
    elif mode == "pretty":
        keep = "._~!$&'()+,;=@"
        slug = _runs(
            slug,
            lambda c: (
                c in keep or unicodedata.category(c)[0] in "ML" or unicodedata.category(c) == "Nd"
            ),
        )
    elif mode == "ascii":
        slug = re.sub(r"[^A-Za-z0-9]+", "-", slug).strip("-") if slug else slug
    elif mode == "raw":
        slug = re.sub(r"\s+", "-", slug)
    if mode in ("default", "latin", "pretty", "ascii"):
        slug = re.sub(r"^-|-$", "", slug)
    return slug if js.truthy(cased) else slug.lower()


def _runs(value: str, kept: Any) -> str:
    """Every run of characters that are not `kept` becomes one dash."""
    out: list[str] = []
    for char in value:
        if kept(char):
            out.append(char)
        elif not out or out[-1] != "-":
            out.append("-")
    return "".join(out)


def _number_of_words(value: Any, mode: Any = None) -> int:
    words = text(value).strip()
    return len(re.split(r"\s+", words)) if words else 0


FILTERS: dict[str, Any] = {
    "json": _json,
    "jsonify": _json,
    "inspect": _json,
    "to_integer": lambda value: _result(number(value)),
    "xml_escape": lambda value: (
        text(value)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    ),
    "cgi_escape": _cgi_escape,
    "uri_escape": _uri_escape,
    "slugify": _slugify,
    "normalize_whitespace": lambda value: re.sub(r"\s+", " ", text(value)),
    "number_of_words": _number_of_words,
    "push": lambda value, item=None: JsArray([*_array(value), item]),
    "unshift": lambda value, item=None: JsArray([item, *_array(value)]),
    "pop": lambda value: JsArray(_array(value)[:-1]),
    "shift": lambda value: JsArray(_array(value)[1:]),
    "divided_by": _divided_by,
    "round": _round,
    "size": _size,
    "first": _first,
    "last": _last,
}
