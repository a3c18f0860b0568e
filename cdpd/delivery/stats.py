"""A lane's live figures since the daemon started (the outbox holds the durable ones), and its
rate limit."""

from __future__ import annotations

import asyncio
from collections import Counter, deque

from cdpd.clock import Clock

LATENCY_SAMPLES = 2048


class LaneStats:
    """What the lane has seen since the daemon started (the outbox holds the durable counts)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.attempts = 0
        self.delivered = 0
        self.retried = 0
        self.dead = 0
        self.errors_by_status: Counter[str] = Counter()
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.last_error: str | None = None
        self.last_error_status: int | None = None
        self.last_error_message_id: str | None = None
        self.last_error_at: str | None = None
        self.unhealthy = False
        self.circuit = "closed"  # closed, open or probing (delivery/circuit.py)
        # Notified after every recorded attempt, for whoever watches the lane (tests do).
        self.recorded = asyncio.Condition()

    def percentile_ms(self, fraction: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class RateLimit:
    """A token bucket of `per_s` requests a second (0: no limit), on the lane's clock."""

    def __init__(self, per_s: float, clock: Clock) -> None:
        self._per_s = per_s
        self._clock = clock
        self._tokens = max(1.0, per_s)
        self._updated_ms = clock.now_ms()

    async def acquire(self, interrupt: asyncio.Event) -> None:
        """Wait for a token, or until `interrupt` is set."""
        if self._per_s <= 0:
            return
        while True:
            now = self._clock.now_ms()
            self._tokens = min(
                max(1.0, self._per_s), self._tokens + (now - self._updated_ms) / 1000 * self._per_s
            )
            self._updated_ms = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            if await self._clock.wait(interrupt, (1 - self._tokens) / self._per_s):
                return
