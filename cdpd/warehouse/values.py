"""Column types and the values that fit them. Pure.

A new column's type comes from the values that create it (the last one in the batch decides, as
in Segment): JSON booleans, integers (64-bit) and floats keep their type, strings in ISO-8601
date-time form are timestamps, everything else is a string. A column's type never changes
afterwards. A value of another type is converted only when nothing is lost:

| column    | also accepts                                              |
|-----------|-----------------------------------------------------------|
| string    | any value, as its JSON text (`true`, `42`, `1.5`)         |
| float     | an integer that a double holds exactly                    |
| integer   | a float with no fractional part, within 64 bits           |
| timestamp | nothing else (a string must parse as a date-time)         |
| boolean   | nothing else                                              |

Anything else is `UNLOADABLE`: the column gets NULL and the value goes to the discards table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import msgspec

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_TIMESTAMP_SHAPE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:?\d{2})?"
)


class ColumnType(StrEnum):
    BOOLEAN = "boolean"
    INTEGER = "integer"
    FLOAT = "float"
    TIMESTAMP = "timestamp"
    STRING = "string"


class _Unloadable:
    def __repr__(self) -> str:
        return "UNLOADABLE"


UNLOADABLE: Final = _Unloadable()
Converter = Callable[[Any], Any]


def parse_timestamp(text: str) -> datetime | None:
    """An aware datetime for an ISO-8601 date-time (no offset means UTC), else None."""
    if len(text) < 19 or text[4] != "-" or not _TIMESTAMP_SHAPE.fullmatch(text):
        return None
    try:
        moment = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        return None
    return _in_utc_range(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


def _in_utc_range(moment: datetime) -> datetime | None:
    """`moment`, if it has a UTC date in years 1 to 9999 (`0001-01-01T00:30+01:00` has none):
    the warehouses store UTC, and Python reads no other years back."""
    if 1 < moment.year < 9999:
        return moment
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return None
    return moment


def parse_timestamps(values: list[Any]) -> list[datetime | None]:
    """`parse_timestamp` of each value (None for one that is not text): the same answers, in
    one conversion for the whole list when every value has the shape of a date-time."""
    if all(type(v) is str for v in values) and all(map(_TIMESTAMP_SHAPE.fullmatch, values)):
        try:
            moments = msgspec.convert(values, list[datetime])
        except msgspec.ValidationError:
            pass
        else:
            return [
                _in_utc_range(m if m.tzinfo is not None else m.replace(tzinfo=UTC)) for m in moments
            ]
    return [parse_timestamp(v) if type(v) is str else None for v in values]


def infer_type(value: Any) -> ColumnType:
    kind = type(value)
    if kind is str:
        return ColumnType.TIMESTAMP if parse_timestamp(value) else ColumnType.STRING
    if kind is bool:
        return ColumnType.BOOLEAN
    if kind is int:
        return ColumnType.INTEGER if INT64_MIN <= value <= INT64_MAX else ColumnType.STRING
    if kind is float:
        return ColumnType.FLOAT
    return ColumnType.STRING


def converters(encode_timestamp: Callable[[datetime], Any]) -> dict[ColumnType, Converter]:
    """One converter per column type; `encode_timestamp` gives a sink's form of a timestamp."""

    def to_timestamp(value: Any) -> Any:
        moment = parse_timestamp(value) if type(value) is str else None
        return UNLOADABLE if moment is None else encode_timestamp(moment)

    return {
        ColumnType.STRING: to_string,
        ColumnType.INTEGER: to_integer,
        ColumnType.FLOAT: to_float,
        ColumnType.BOOLEAN: to_boolean,
        ColumnType.TIMESTAMP: to_timestamp,
    }


def to_string(value: Any) -> Any:
    if type(value) is str:
        return value
    return msgspec.json.encode(value).decode()


def to_integer(value: Any) -> Any:
    kind = type(value)
    if kind is int:
        return value if INT64_MIN <= value <= INT64_MAX else UNLOADABLE
    if kind is float and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
        return int(value)
    return UNLOADABLE


def to_float(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int and float(value) == value and int(float(value)) == value:
        return float(value)
    return UNLOADABLE


def to_boolean(value: Any) -> Any:
    return value if type(value) is bool else UNLOADABLE


def utc_text(moment: datetime) -> str:
    """`2026-11-28T19:27:13.123456Z`: one fixed width, so text comparison is time order."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"
