"""One rule for every background service: run it; if it fails, log and run it again, later.

A service is anything with `run(stop)` that works until `stop` is set and then returns. An
unexpected exception is logged (event `service_failed`, with its traceback) and the service
starts again after a pause that doubles from `initial_s` up to `max_s` (and starts over once a
run has lasted `healthy_s`), so a fault in one background task never takes the daemon down and
never spins. Setting `stop` ends the pause at once; cancellation is never caught.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import structlog

from cdpd.clock import Clock

log = structlog.get_logger()


class Service(Protocol):
    """A background service: does its work until `stop` is set, then returns."""

    async def run(self, stop: asyncio.Event) -> None: ...


class Backoff(msgspec.Struct, frozen=True):
    """Pause before restart n (n = 1, 2, ...): min(max_s, initial_s * 2 ** (n - 1))."""

    initial_s: float = 0.5
    max_s: float = 30.0
    healthy_s: float = 60.0  # a run at least this long resets n to 1

    def pause_s(self, restart: int) -> float:
        return float(min(self.max_s, self.initial_s * 2 ** min(restart - 1, 32)))


class Restarts:
    """How often each supervised service has been restarted (for /metrics and tests).

    A service is listed, at 0, from the moment it is first supervised."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.changed = asyncio.Condition()

    def watch(self, name: str) -> None:
        self.counts.setdefault(name, 0)

    async def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, name: str, count: int) -> None:
        """Wait until `name` has been restarted at least `count` times."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.counts.get(name, 0) >= count)


async def supervise(
    name: str,
    run: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    *,
    clock: Clock,
    backoff: Backoff | None = None,
    restarts: Restarts | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Run `run(stop)` until it returns or `stop` is set, restarting it after a failure.

    A failure while `stop` is set is logged but not restarted: the service was ending anyway."""
    backoff = backoff or Backoff()
    if restarts is not None:
        restarts.watch(name)
    restart = 0
    while not stop.is_set():
        started = monotonic()
        try:
            await run(stop)
            return
        except Exception:
            if monotonic() - started >= backoff.healthy_s:
                restart = 0
            if stop.is_set():
                log.exception("service_failed", service=name, restart_in_s=None)
                return
            restart += 1
            pause_s = backoff.pause_s(restart)
            log.exception("service_failed", service=name, restart_in_s=pause_s, restarts=restart)
        # The pause starts at the failure, not whenever the count below lets this task run on.
        resume_at_ms = clock.now_ms() + round(pause_s * 1000)
        if restarts is not None:
            await restarts.count(name)
        if await clock.wait_until(stop, resume_at_ms):
            return
