"""The reducers of the query language as aggregates kept per hour bucket: how one event updates
a bucket (`add`), how two profiles' buckets combine (`combine`) and how the buckets inside a
window give the value (`fold`). Pure, and small enough to store as msgpack.

| reducer | bucket | value |
|---|---|---|
| count | int | events in the window |
| sum, avg | [sum, n] of numeric values | sum (0 when none) / mean (absent when none) |
| min, max | number (or string `as string`) | smallest / greatest; absent when none |
| mode | {value: n} | most frequent value seen `min_frequency` times or more; ties: first |
|      |            | in alphabetical order                                              |
| first, last | [timestamp_ms, value] | value of the earliest / latest event by timestamp |
| unique | {value: n} | distinct values, sorted alphabetically |

Values kept in `mode` and `unique` buckets are JSON text, so `1` and `"1"` stay apart; each
bucket keeps at most `MAX_DISTINCT_VALUES` of them (Segment's 10,000), later ones are dropped.
An array value counts each element unless the reducer says `as array`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from cdpd.engage.values import number, text

MAX_DISTINCT_VALUES = 10_000
_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.decode


class Reducer(msgspec.Struct, frozen=True):
    kind: str  # count sum avg min max mode first last unique
    path: tuple[str, ...] = ()
    cast: str | None = None  # "number", "string" or "array"
    min_frequency: int = 1


def add(reducer: Reducer, bucket: Any, value: Any, timestamp_ms: int) -> Any:
    """The bucket after one more event whose reducer input is `value` (None when the event
    has no such property)."""
    kind = reducer.kind
    if kind == "count":
        return (bucket or 0) + 1
    if kind in ("sum", "avg"):
        amount = number(value)
        if amount is None:
            return bucket
        total, count = bucket or (0.0, 0)
        return [total + amount, count + 1]
    if kind in ("min", "max"):
        candidate = _ordered(reducer, value)
        if candidate is None:
            return bucket
        if bucket is None:
            return candidate
        return min(bucket, candidate) if kind == "min" else max(bucket, candidate)
    if kind in ("mode", "unique"):
        return _add_values(reducer, bucket, value)
    if kind in ("first", "last"):
        if value is None:
            return bucket
        if bucket is None:
            return [timestamp_ms, value]
        if kind == "first":
            return [timestamp_ms, value] if timestamp_ms < bucket[0] else bucket
        return [timestamp_ms, value] if timestamp_ms >= bucket[0] else bucket
    raise ValueError(f"unknown reducer {kind}")


def combine(reducer: Reducer, left: Any, right: Any) -> Any:
    """One bucket holding what two buckets of the same hour hold (profiles merging)."""
    if left is None:
        return right
    if right is None:
        return left
    kind = reducer.kind
    if kind == "count":
        return left + right
    if kind in ("sum", "avg"):
        return [left[0] + right[0], left[1] + right[1]]
    if kind == "min":
        return min(left, right)
    if kind == "max":
        return max(left, right)
    if kind in ("mode", "unique"):
        merged = dict(left)
        for key, count in right.items():
            if key in merged or len(merged) < MAX_DISTINCT_VALUES:
                merged[key] = merged.get(key, 0) + count
        return merged
    if kind == "first":
        return right if right[0] < left[0] else left
    if kind == "last":
        return right if right[0] > left[0] else left
    raise ValueError(f"unknown reducer {kind}")


def fold(reducer: Reducer, buckets: Iterable[Any]) -> Any:
    """The reducer's value over the buckets of a window."""
    merged = None
    for bucket in buckets:
        merged = combine(reducer, merged, bucket)
    kind = reducer.kind
    if kind == "count":
        return merged or 0
    if kind == "sum":
        return _tidy(merged[0]) if merged else 0
    if kind == "avg":
        return merged[0] / merged[1] if merged else None
    if kind in ("min", "max"):
        return _tidy(merged) if isinstance(merged, float) else merged
    if kind in ("first", "last"):
        return merged[1] if merged else None
    if kind == "unique":
        return [_decode(key) for key in sorted(merged or {}, key=_alphabetical)]
    if kind == "mode":
        return _mode(merged or {}, reducer.min_frequency)
    raise ValueError(f"unknown reducer {kind}")


def _mode(counts: dict[str, int], min_frequency: int) -> Any:
    best: str | None = None
    for key, count in counts.items():
        if count < min_frequency:
            continue
        if (
            best is None
            or count > counts[best]
            or (count == counts[best] and _alphabetical(key) < _alphabetical(best))
        ):
            best = key
    return None if best is None else _decode(best)


def _alphabetical(key: str) -> str:
    value = _decode(key)
    return value if isinstance(value, str) else key


def _ordered(reducer: Reducer, value: Any) -> Any:
    if reducer.cast == "string":
        return None if value is None or isinstance(value, dict | list) else text(value)
    return number(value)


def _add_values(reducer: Reducer, bucket: Any, value: Any) -> Any:
    if value is None:
        return bucket
    items = value if isinstance(value, list) and reducer.cast != "array" else [value]
    counts = dict(bucket or {})
    for item in items:
        if item is None:
            continue
        key = _encode(item).decode()
        if key in counts or len(counts) < MAX_DISTINCT_VALUES:
            counts[key] = counts.get(key, 0) + 1
    return counts or bucket


def _tidy(value: float) -> float | int:
    """Whole sums print as integers (`3`, not `3.0`), as a JSON number would arrive."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value
