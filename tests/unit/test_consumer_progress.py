"""A consumer's progress: the contiguous position and the ranges finished beyond it."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from cdpd.outbox.consumers import Progress


def test_in_order_ranges_move_the_position() -> None:
    progress = Progress(0)
    progress.finish(1, 100)
    progress.finish(101, 200)
    assert (progress.seq, progress.done) == (200, [])


def test_ranges_finished_out_of_order_wait_beyond_the_position() -> None:
    progress = Progress(0)
    progress.finish(101, 200)
    progress.finish(301, 400)
    assert (progress.seq, progress.done) == (0, [(101, 200), (301, 400)])
    assert progress.is_done(150)
    assert not progress.is_done(250)
    assert not progress.is_done(1)
    progress.finish(1, 100)
    assert (progress.seq, progress.done) == (200, [(301, 400)])
    progress.finish(201, 300)
    assert (progress.seq, progress.done) == (400, [])


def test_finishing_twice_or_overlapping_changes_nothing() -> None:
    progress = Progress(10, [(20, 30)])
    progress.finish(5, 8)  # already passed
    progress.finish(25, 35)  # overlaps a finished range
    progress.finish(20, 30)
    assert (progress.seq, progress.done) == (10, [(20, 35)])


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=2**32))
def test_any_finishing_order_ends_at_the_last_seq(batches: int, seed: int) -> None:
    ranges = [(n * 10 + 1, n * 10 + 10) for n in range(batches)]
    random.Random(seed).shuffle(ranges)
    progress = Progress(0)
    for first, last in ranges:
        progress.finish(first, last)
        assert all(a > progress.seq for a, _ in progress.done)
    assert (progress.seq, progress.done) == (batches * 10, [])
