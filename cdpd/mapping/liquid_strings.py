"""liquidjs's string, array and math filters, for the `@liquid` directive: each reads its input
as liquidjs does (text by liquidjs's stringify, numbers by `+v || 0`) and computes in
JavaScript's way (float arithmetic, `split("")` into characters, `truncate` counting the
ellipsis), so that a template gives what it gives at Segment."""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any
from urllib.parse import quote, unquote

from cdpd.mapping import js
from cdpd.mapping.errors import MappingError
from cdpd.mapping.liquid_filters import JsArray, number, text, to_number

_JS_SPACE = " \t\n\r\v\f\u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
)  # ECMAScript's WhiteSpace and LineTerminator: what trim() removes
_UNSET: Any = object()
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"}
_UNESCAPES = {value: key for key, value in _ESCAPES.items()}


def _split(value: str, separator: str) -> list[str]:
    return list(value) if separator == "" else value.split(separator)


def _result(value: float) -> float | int:
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _array(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _strip(value: Any, chars: Any = None, left: bool = True, right: bool = True) -> str:
    string = text(value)
    strip_set = text(chars) if chars not in (None, "", False) else _JS_SPACE
    if left:
        string = string.lstrip(strip_set)
    if right:
        string = string.rstrip(strip_set)
    return string


def _replace_first(value: Any, pattern: Any, replacement: Any = None) -> str:
    return text(value).replace(text(pattern), text(replacement), 1)


def _replace_last(value: Any, pattern: Any, replacement: Any = None) -> str:
    string, found = text(value), text(pattern)
    index = string.rfind(found)
    if index == -1:
        return string
    return string[:index] + text(replacement) + string[index + len(found) :]


def _split_filter(value: Any, separator: Any = None) -> JsArray:
    parts = _split(text(value), text(separator))
    while parts and parts[-1] == "":
        parts.pop()
    return JsArray(parts)


def _truncate(value: Any, length: Any = 50, ellipsis: Any = "...") -> Any:
    string, end = text(value), text(ellipsis)
    limit = number(length)
    if len(string) <= limit:
        return value
    keep = limit - len(end)
    return string[: max(0, int(keep)) if math.isfinite(keep) else 0] + end


def _truncatewords(value: Any, words: Any = 15, ellipsis: Any = "...") -> str:
    parts = re.split(r"\s+", text(value))
    count = number(words)
    if count <= 0:
        count = 1
    if math.isnan(count):
        return ""
    kept = " ".join(parts[: int(count)])
    return kept + text(ellipsis) if len(parts) >= count else kept


def _escape(value: Any) -> str:
    return re.sub(r"[&<>\"']", lambda m: _ESCAPES[m.group(0)], text(value))


def _escape_once(value: Any) -> str:
    unescaped = re.sub(r"&(amp|lt|gt|#34|#39);", lambda m: _UNESCAPES[m.group(0)], text(value))
    return _escape(unescaped)


def _url_decode(value: Any) -> str:
    string = text(value)
    if re.search(r"%(?![0-9A-Fa-f]{2})", string):
        raise MappingError("URI malformed")
    try:
        return unquote(string, errors="strict").replace("+", " ")
    except UnicodeDecodeError:
        raise MappingError("URI malformed") from None


def _base64_decode(value: Any) -> str:
    """Node's Buffer.from(text, "base64"): other characters are skipped, URL-safe ones read."""
    cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text(value).replace("-", "+").replace("_", "/"))
    cleaned = cleaned[: len(cleaned) - len(cleaned) % 4 if len(cleaned) % 4 == 1 else None]
    try:
        raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except binascii.Error:
        raw = b""
    return raw.decode("utf-8", errors="replace")


def _join(value: Any, separator: Any = None) -> str:
    glue = " " if separator is None else text(separator)
    return glue.join("" if item is None else js.string(item) for item in _array(value))


def _sum(value: Any, key: Any = None) -> float | int:
    total = 0.0
    for item in _array(value):
        picked = item.get(text(key)) if key is not None and isinstance(item, dict) else item
        if key is not None and not isinstance(item, dict):
            picked = None
        found = number(picked) if picked is not None else math.nan
        total += 0 if math.isnan(found) else found
    return _result(total)


def _compact(value: Any) -> JsArray:
    return JsArray(item for item in _array(value) if item is not None)


def _slice(value: Any, begin: Any, length: Any = 1) -> Any:
    if value is None:
        return JsArray()
    items: Any = value if isinstance(value, list) else text(value)
    start, size = to_number(begin), to_number(length)
    start = len(items) + start if start < 0 else start
    if start < 0 or size < 0:
        return JsArray() if isinstance(items, list) else ""
    first, last = int(start), int(start + size)
    return JsArray(items[first:last]) if isinstance(items, list) else items[first:last]


def _strip_html(value: Any) -> str:
    """liquidjs's strip_html: script and style blocks, comments and tags go; an opener that is
    never closed keeps the rest of the text."""
    string = text(value)
    blocks = {"<script": "</script>", "<style": "</style>", "<!--": "-->", "<": ">"}
    out: list[str] = []
    at = 0
    while at < len(string):
        start = string.find("<", at)
        if start < 0:
            return "".join(out) + string[at:]
        out.append(string[at:start])
        for opener, closer in list(blocks.items()):
            if not string.startswith(opener, start):
                continue
            end = string.find(closer, start + len(opener))
            if end >= 0:
                at = end + len(closer)
                break
            del blocks[opener]
        if at <= start:
            return "".join(out) + string[start:]
    return "".join(out)


def _where(value: Any, key: Any = None, expected: Any = _UNSET) -> JsArray:
    """Items whose `key` is truthy (no expected value) or equal to the expected value."""
    path = text(key)
    kept = []
    for item in _array(value):
        found = js.get(item, path) if isinstance(item, dict) and path else js.ABSENT
        if expected is _UNSET:
            keep = found is not js.ABSENT and found is not None and found is not False
        else:
            keep = type(found) is type(expected) and found == expected
        if keep:
            kept.append(item)
    return JsArray(kept)


def _math(operation: Any) -> Any:
    def apply(value: Any, *arguments: Any) -> float | int:
        return _result(operation(to_number(value), *(to_number(a) for a in arguments)))

    return apply


def _modulo(value: float, divisor: float) -> float:
    if divisor == 0:
        return math.nan
    return math.fmod(math.fmod(value, divisor) + divisor, divisor)


FILTERS: dict[str, Any] = {
    "append": lambda value, other=None: text(value) + text(other),
    "prepend": lambda value, other=None: text(other) + text(value),
    "downcase": lambda value: text(value).lower(),
    "upcase": lambda value: text(value).upper(),
    "capitalize": lambda value: text(value)[:1].upper() + text(value)[1:].lower(),
    "remove": lambda value, part=None: "".join(_split(text(value), text(part))),
    "remove_first": lambda value, part=None: text(value).replace(text(part), "", 1),
    "remove_last": lambda value, part=None: _replace_last(value, part, ""),
    "replace": lambda value, part=None, by=None: text(by).join(_split(text(value), text(part))),
    "replace_first": _replace_first,
    "replace_last": _replace_last,
    "strip": lambda value, chars=None: _strip(value, chars),
    "lstrip": lambda value, chars=None: _strip(value, chars, right=False),
    "rstrip": lambda value, chars=None: _strip(value, chars, left=False),
    "strip_newlines": lambda value: re.sub(r"\r?\n", "", text(value)),
    "split": _split_filter,
    "truncate": _truncate,
    "truncatewords": _truncatewords,
    "escape": _escape,
    "escape_once": _escape_once,
    "url_encode": lambda value: quote(text(value), safe="-_.!~*'()").replace("%20", "+"),
    "url_decode": _url_decode,
    "base64_encode": lambda value: base64.b64encode(text(value).encode()).decode(),
    "base64_decode": _base64_decode,
    "join": _join,
    "sum": _sum,
    "compact": _compact,
    "slice": _slice,
    "strip_html": _strip_html,
    "where": _where,
    "plus": _math(lambda a, b=0.0: a + b),
    "minus": _math(lambda a, b=0.0: a - b),
    "times": _math(lambda a, b=0.0: a * b),
    "modulo": _math(_modulo),
    "abs": _math(abs),
    "ceil": _math(lambda a: float(math.ceil(a)) if math.isfinite(a) else a),
    "floor": _math(lambda a: float(math.floor(a)) if math.isfinite(a) else a),
    "at_least": _math(lambda a, b=0.0: max(a, b)),
    "at_most": _math(lambda a, b=0.0: min(a, b)),
}
