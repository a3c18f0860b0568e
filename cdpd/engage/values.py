"""How the query language reads and compares values: paths into traits and properties, the
comparators (`=`, `contains`, `within_last` ...) and the date arithmetic they need. Pure.

Comparisons follow Segment's notes: a missing value (`None`) satisfies only `absent()` (and the
negations defined as `NOT ...`: `omits`); `differs` and `none_of` need a value. Two values that
both read as numbers (`100`, `"100"`, `1e2`) compare as numbers; `true` equals `'true'`; an
array value matches when one of its elements does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

HOUR_MS = 3_600_000
_UNESCAPED_DOT = re.compile(r"(?<!\\)\.")


def split_path(name: str) -> tuple[str, ...]:
    """`address.city` is two keys; `a\\.b` is the key `a.b` (Segment's escape)."""
    return tuple(part.replace("\\.", ".") for part in _UNESCAPED_DOT.split(name))


def lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def number(value: Any) -> float | None:
    """The value as a number, when it is one or a string that reads as one (never a boolean)."""
    kind = type(value)
    if kind is int:
        return float(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def moment_ms(value: Any) -> int | None:
    """Milliseconds since the epoch of an ISO-8601 date or timestamp (UTC without an offset)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _each(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else (value,)


def _equal(left: Any, right: Any) -> bool:
    for item in _each(left):
        if item is None or isinstance(item, dict):
            continue
        a, b = number(item), number(right)
        if a is not None and b is not None:
            if a == b:
                return True
        elif text(item) == text(right):
            return True
    return False


def _order(left: Any, right: Any, test: Callable[[Any, Any], bool]) -> bool:
    if left is None or right is None:
        return False
    a, b = number(left), number(right)
    if a is not None and b is not None:
        return test(a, b)
    if isinstance(left, str) and isinstance(right, str):
        return test(left, right)
    return False


def _strings(value: Any) -> list[str]:
    return [text(item) for item in _each(value) if item is not None and not isinstance(item, dict)]


# Each comparator takes the value, its evaluated arguments and `now` in milliseconds.
def equals(value: Any, args: list[Any], now_ms: int) -> bool:
    return value is not None and _equal(value, args[0])


def differs(value: Any, args: list[Any], now_ms: int) -> bool:
    return value is not None and args[0] is not None and not _equal(value, args[0])


def exists(value: Any, args: list[Any], now_ms: int) -> bool:
    return value is not None


def absent(value: Any, args: list[Any], now_ms: int) -> bool:
    return value is None


def greater_than(value: Any, args: list[Any], now_ms: int) -> bool:
    return _order(value, args[0], lambda a, b: a > b)


def at_least(value: Any, args: list[Any], now_ms: int) -> bool:
    return _order(value, args[0], lambda a, b: a >= b)


def less_than(value: Any, args: list[Any], now_ms: int) -> bool:
    return _order(value, args[0], lambda a, b: a < b)


def at_most(value: Any, args: list[Any], now_ms: int) -> bool:
    return _order(value, args[0], lambda a, b: a <= b)


def contains(value: Any, args: list[Any], now_ms: int) -> bool:
    return any(text(arg) in item for item in _strings(value) for arg in args)


def omits(value: Any, args: list[Any], now_ms: int) -> bool:
    return not contains(value, args, now_ms)


def starts_with(value: Any, args: list[Any], now_ms: int) -> bool:
    return any(item.startswith(text(arg)) for item in _strings(value) for arg in args)


def ends_with(value: Any, args: list[Any], now_ms: int) -> bool:
    return any(item.endswith(text(arg)) for item in _strings(value) for arg in args)


def one_of(value: Any, args: list[Any], now_ms: int) -> bool:
    return value is not None and any(_equal(value, arg) for arg in args)


def none_of(value: Any, args: list[Any], now_ms: int) -> bool:
    return value is not None and not one_of(value, args, now_ms)


def before_date(value: Any, args: list[Any], now_ms: int) -> bool:
    moment, bound = moment_ms(value), moment_ms(args[0])
    return moment is not None and bound is not None and moment < bound


def after_date(value: Any, args: list[Any], now_ms: int) -> bool:
    moment, bound = moment_ms(value), moment_ms(args[0])
    return moment is not None and bound is not None and moment > bound


def _relative(value: Any, hours: int, now_ms: int) -> tuple[int, int, int] | None:
    """(value, now, now +/- the duration) on one scale: whole days when the duration is in
    days (Segment counts "today" as the current date), milliseconds when in hours."""
    moment = moment_ms(value)
    if moment is None:
        return None
    if hours % 24 == 0 and hours:
        day_ms = 24 * HOUR_MS
        return moment // day_ms, now_ms // day_ms, hours // 24
    return moment, now_ms, hours * HOUR_MS


def within_last(value: Any, args: list[Any], now_ms: int) -> bool:
    scaled = _relative(value, args[0], now_ms)
    return scaled is not None and scaled[1] - scaled[2] <= scaled[0] <= scaled[1]


def within_next(value: Any, args: list[Any], now_ms: int) -> bool:
    scaled = _relative(value, args[0], now_ms)
    return scaled is not None and scaled[1] <= scaled[0] <= scaled[1] + scaled[2]


def before_last(value: Any, args: list[Any], now_ms: int) -> bool:
    scaled = _relative(value, args[0], now_ms)
    return scaled is not None and scaled[0] <= scaled[1] - scaled[2]


def after_next(value: Any, args: list[Any], now_ms: int) -> bool:
    scaled = _relative(value, args[0], now_ms)
    return scaled is not None and scaled[0] >= scaled[1] + scaled[2]


Comparator = Callable[[Any, list[Any], int], bool]
SUGAR = {
    "=": "equals",
    "!=": "differs",
    ">": "greater_than",
    ">=": "at_least",
    "<": "less_than",
    "<=": "at_most",
}
# name -> (function, how many arguments: an exact count or "some" for one or more, argument
# kind: "scalar" values, "duration" for the relative date comparators, "date" for a timestamp)
COMPARATORS: dict[str, tuple[Comparator, int | str, str]] = {
    "equals": (equals, 1, "scalar"),
    "differs": (differs, 1, "scalar"),
    "exists": (exists, 0, "scalar"),
    "absent": (absent, 0, "scalar"),
    "greater_than": (greater_than, 1, "scalar"),
    "at_least": (at_least, 1, "scalar"),
    "less_than": (less_than, 1, "scalar"),
    "at_most": (at_most, 1, "scalar"),
    "contains": (contains, "some", "scalar"),
    "omits": (omits, "some", "scalar"),
    "starts_with": (starts_with, "some", "scalar"),
    "ends_with": (ends_with, "some", "scalar"),
    "one_of": (one_of, "some", "scalar"),
    "none_of": (none_of, "some", "scalar"),
    "before_date": (before_date, 1, "date"),
    "after_date": (after_date, 1, "date"),
    "within_last": (within_last, 1, "duration"),
    "within_next": (within_next, 1, "duration"),
    "before_last": (before_last, 1, "duration"),
    "after_next": (after_next, 1, "duration"),
}
TIME_RELATIVE = {"within_last", "within_next", "before_last", "after_next"}
