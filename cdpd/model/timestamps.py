"""Timestamps as cdpd writes them: UTC, millisecond precision, `YYYY-MM-DDTHH:MM:SS.mmmZ`.

One fixed-width format makes the text columns sort in time order and lets every later stage
parse one shape.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a datetime without an offset is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def format_ms(epoch_ms: int) -> str:
    """`2026-11-28T19:27:13.123Z`; raises ValueError outside the years 1-9999."""
    if not 0 <= epoch_ms <= MAX_EPOCH_MS:
        return _format_before_1970(epoch_ms)
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{_second_prefix(seconds)}.{millis:03d}Z"


def _format_before_1970(epoch_ms: int) -> str:
    try:
        moment = EPOCH + timedelta(milliseconds=epoch_ms)
    except OverflowError:
        raise ValueError(f"timestamp {epoch_ms} ms is outside the years 1-9999") from None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


@lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
