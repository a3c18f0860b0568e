"""Waiting for whichever of several things happens first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def first_of(*waits: Awaitable[object], timeout_s: float | None = None) -> None:
    """Until the first of `waits` ends (its error is raised here) or `timeout_s` passes; the
    others are cancelled."""
    tasks = {asyncio.ensure_future(wait) for wait in waits}
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        task.result()
