"""Timestamps as cdpd writes them: UTC, millisecond precision, `YYYY-MM-DDTHH:MM:SS.mmmZ`.

One fixed-width format makes the text columns sort in time order and lets every later stage
parse one shape.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# Formatting runs for every message, so its two halves are looked up rather than built: the
# milliseconds from a table, the date and time from a memo of recent seconds.
_MILLIS = tuple(f".{n:03d}Z" for n in range(1000))
_SECOND_MEMO_SIZE = 4096
_second_memo: dict[int, str] = {}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a datetime without an offset is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # The same as `(moment - EPOCH) // timedelta(milliseconds=1)` (a timedelta's seconds and
    # microseconds are never negative), in plain integers: this runs for every message.
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO-8601 time (UTC when it has no offset)."""
    return to_epoch_ms(datetime.fromisoformat(text))


_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_when_ms(text: str, at_ms: int) -> int:
    """A time given on a command line: ISO-8601 (UTC when it has no offset), `now`, or a
    duration before `at_ms` such as `90s`, `15m`, `2h`, `7d`, `1w` (also with ` ago`)."""
    words = text.strip().lower().removesuffix(" ago").strip()
    if words == "now":
        return at_ms
    ago = _AGO.fullmatch(words)
    if ago:
        return at_ms - round(float(ago.group(1)) * _UNIT_MS[ago.group(2)])
    try:
        return parse_ms(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 time nor a duration ago such as 15m, 2h or 7d"
        ) from None


def format_ms(epoch_ms: int) -> str:
    """`2026-11-28T19:27:13.123Z`; raises ValueError outside the years 1-9999."""
    seconds, millis = divmod(epoch_ms, 1000)
    prefix = _second_memo.get(seconds)
    if prefix is None:
        prefix = _second_prefix(seconds)
    return prefix + _MILLIS[millis]


def _second_prefix(seconds: int) -> str:
    if 0 <= seconds * 1000 <= MAX_EPOCH_MS:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    else:
        prefix = _prefix_outside_fast_range(seconds)
    if len(_second_memo) >= _SECOND_MEMO_SIZE:
        _second_memo.clear()
    _second_memo[seconds] = prefix
    return prefix


def _prefix_outside_fast_range(seconds: int) -> str:
    """Before 1970 (and past 9999, which is refused); time.gmtime is not portable there."""
    try:
        moment = EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"timestamp {seconds * 1000} ms is outside the years 1-9999") from None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
