from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdpd.model.timestamps import format_ms, to_epoch_ms


def test_format_is_fixed_width_utc_with_milliseconds() -> None:
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_ms(1_764_325_633_123) == "2025-11-28T10:27:13.123Z"


def test_format_before_1970_and_at_the_end_of_9999() -> None:
    assert format_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert format_ms(253_402_300_799_999) == "9999-12-31T23:59:59.999Z"
    with pytest.raises(ValueError, match="outside the years 1-9999"):
        format_ms(253_402_300_800_000)


def test_epoch_ms_honours_offsets_and_reads_naive_times_as_utc() -> None:
    utc = datetime(2026, 1, 1, 10, 0, 0, 123_000, tzinfo=UTC)
    plus_two = utc.astimezone(timezone(timedelta(hours=2)))
    naive = utc.replace(tzinfo=None)
    assert to_epoch_ms(utc) == to_epoch_ms(plus_two) == to_epoch_ms(naive)
    assert format_ms(to_epoch_ms(plus_two)) == "2026-01-01T10:00:00.123Z"


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))])))
def test_epoch_ms_is_the_floor_of_the_time_since_the_epoch(moment: datetime) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert to_epoch_ms(moment) == (moment - epoch) // timedelta(milliseconds=1)
