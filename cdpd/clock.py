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
