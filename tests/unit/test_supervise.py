"""The supervision rule, on a fake clock: restarts with a doubling pause, a healthy run resets
it, `stop` ends the pause, a normal return ends supervision, and cancellation is never caught."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from cdpd.supervise import Backoff, Restarts, supervise
from tests.helpers import FakeClock

BACKOFF = Backoff(initial_s=1.0, max_s=4.0, healthy_s=60.0)


class Scripted:
    """A service whose every run waits for the test to say how it ends: "fail", "return", or
    "wait" (for stop)."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.runs: asyncio.Queue[asyncio.Future[str]] = asyncio.Queue()
        self.started_ms: list[int] = []
        self.cancelled = False

    async def run(self, stop: asyncio.Event) -> None:
        self.started_ms.append(self._clock.now_ms())
        ending: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self.runs.put(ending)
        try:
            outcome = await ending
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if outcome == "fail":
            raise RuntimeError(f"run {len(self.started_ms)} failed")
        if outcome == "wait":
            await stop.wait()

    async def end(self, outcome: str) -> None:
        """Wait for the next run to start, then end it with `outcome`."""
        (await self.runs.get()).set_result(outcome)


class Supervised:
    def __init__(self) -> None:
        self.clock = FakeClock(start_ms=0)
        self.service = Scripted(self.clock)
        self.stop = asyncio.Event()
        self.restarts = Restarts()
        self.task = asyncio.create_task(
            supervise(
                "svc",
                self.service.run,
                self.stop,
                clock=self.clock,
                backoff=BACKOFF,
                restarts=self.restarts,
                monotonic=lambda: self.clock.now_ms() / 1000,
            )
        )

    async def fail(self, restarts: int) -> None:
        await self.service.end("fail")
        await self.restarts.wait_for("svc", restarts)

    async def not_restarted_yet(self) -> None:
        for _ in range(20):  # let any woken task run; no time passes
            await asyncio.sleep(0)
        assert self.service.runs.empty()


def failures(logs: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    return [(e["restart_in_s"], e.get("restarts")) for e in logs if e["event"] == "service_failed"]


@pytest.mark.parametrize(("restart", "pause_s"), [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0)])
def test_the_pause_doubles_up_to_its_cap(restart: int, pause_s: float) -> None:
    assert Backoff().pause_s(restart) == pause_s
    assert Backoff().pause_s(10_000) == 30.0


async def test_a_failing_service_restarts_after_a_doubling_pause() -> None:
    s = Supervised()
    with capture_logs() as logs:
        for number, pause_s in enumerate([1.0, 2.0, 4.0, 4.0], start=1):
            await s.fail(number)
            failed_ms = s.clock.now_ms()
            s.clock.advance(pause_s - 0.001)
            await s.not_restarted_yet()
            s.clock.advance(0.001)
            assert await _next_start_ms(s) == failed_ms + round(pause_s * 1000)
        s.stop.set()
        await s.service.end("wait")
        await s.task
    assert failures(logs) == [(1.0, 1), (2.0, 2), (4.0, 3), (4.0, 4)]
    failed = [e for e in logs if e["event"] == "service_failed"]
    assert all(e["service"] == "svc" and e["exc_info"] is True for e in failed)
    assert all(e["log_level"] == "error" for e in failed)
    assert s.restarts.counts == {"svc": 4}


async def _next_start_ms(s: Supervised) -> int:
    """Wait for the next run to start; leaves its ending for the test to give."""
    ending = await s.service.runs.get()
    s.service.runs.put_nowait(ending)
    return s.service.started_ms[-1]


async def test_a_healthy_run_resets_the_pause() -> None:
    s = Supervised()
    with capture_logs() as logs:
        await s.fail(1)
        s.clock.advance(1.0)
        await _next_start_ms(s)
        await s.fail(2)
        s.clock.advance(2.0)
        await _next_start_ms(s)
        s.clock.advance(BACKOFF.healthy_s)  # the third run lasts long enough
        await s.fail(3)
        failed_ms = s.clock.now_ms()
        s.clock.advance(1.0)
        assert await _next_start_ms(s) == failed_ms + 1000
        s.stop.set()
        await s.service.end("return")
        await s.task
    assert failures(logs) == [(1.0, 1), (2.0, 2), (1.0, 1)]


async def test_stop_ends_the_pause_at_once() -> None:
    s = Supervised()
    await s.fail(1)
    s.stop.set()
    await s.task
    assert s.service.runs.empty()
    assert len(s.service.started_ms) == 1
    assert s.clock.now_ms() == 0


async def test_a_normal_return_ends_supervision_without_a_restart() -> None:
    s = Supervised()
    with capture_logs() as logs:
        await s.service.end("return")
        await s.task
    assert len(s.service.started_ms) == 1
    assert s.restarts.counts == {"svc": 0}
    assert failures(logs) == []


async def test_a_failure_while_stopping_is_logged_but_not_restarted() -> None:
    s = Supervised()
    with capture_logs() as logs:
        await _next_start_ms(s)
        s.stop.set()
        await s.service.end("fail")
        await s.task
    assert failures(logs) == [(None, None)]
    assert s.restarts.counts == {"svc": 0}


async def test_cancellation_propagates_from_a_run() -> None:
    s = Supervised()
    await _next_start_ms(s)
    s.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await s.task
    assert s.service.cancelled
    assert s.restarts.counts == {"svc": 0}


async def test_cancellation_propagates_from_the_pause() -> None:
    s = Supervised()
    await s.fail(1)
    s.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await s.task
    assert len(s.service.started_ms) == 1
