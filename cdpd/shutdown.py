"""How the time SIGTERM may take (`server.shutdown_timeout_s`) is shared among the drain's
phases, so that the whole shutdown takes at most that long, never the sum of each phase's own
limit.

The phases run in order: in-flight HTTP requests finish, idle connections close, delivery's
attempts in flight finish, warehouse syncs commit their batch, the writer commits what is
pending and the outbox closes. Each phase gets what is left of the total less what the phases
after it are owed; a phase that finishes early leaves its time to the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Shares of the total, each capped by the phase's own limit or by a few seconds.
DELIVERY_SHARE = 1 / 3
CLOSE_SHARE = 0.05  # closing idle connections, committing and closing the outbox
CLOSE_CAP_S = 1.0


class ShutdownBudget:
    def __init__(
        self,
        total_s: float,
        *,
        delivery_drain_s: float,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_s = total_s
        self._clock_s = clock_s
        self._started_s: float | None = None
        self.close_s = min(CLOSE_CAP_S, total_s * CLOSE_SHARE)
        self.delivery_s = min(delivery_drain_s, total_s * DELIVERY_SHARE)

    def start(self) -> None:
        """The shutdown begins (the first call counts)."""
        if self._started_s is None:
            self._started_s = self._clock_s()

    def left_s(self, owed_after_s: float = 0.0) -> float:
        """What is left of the total, less `owed_after_s` kept for later phases."""
        self.start()
        assert self._started_s is not None
        elapsed_s = self._clock_s() - self._started_s
        return max(0.0, self.total_s - elapsed_s - owed_after_s)

    def requests_s(self) -> float:
        """For in-flight requests: all but closing, delivery's share and the final commit."""
        return self.left_s(self.close_s * 2 + self.delivery_s)

    def delivery_drain_s(self) -> float:
        return self.left_s(self.close_s)

    def warehouses_s(self) -> float:
        return self.left_s(self.close_s)
