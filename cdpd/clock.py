"""Time as the background stages see it: replaceable, so tests never sleep through a backoff."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Protocol

from cdpd.model.timestamps import now_ms


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait until `event` is set (True) or `timeout_s` has passed (False)."""
        ...

    async def wait_until(self, event: asyncio.Event, at_ms: int) -> bool:
        """Wait until `event` is set (True) or the clock reaches `at_ms` (False). A deadline
        computed from an earlier `now_ms()` stays that deadline however late the wait starts."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return now_ms()

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        if event.is_set():
            return True
        with suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout_s)):
                await event.wait()
                return True
        return False

    async def wait_until(self, event: asyncio.Event, at_ms: int) -> bool:
        return await self.wait(event, (at_ms - self.now_ms()) / 1000)
