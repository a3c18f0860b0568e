"""A lane's circuit breaker: when a destination keeps failing, the lane stops sending as a whole
and probes it with one request at a time, instead of charging every waiting message an attempt.

- closed: requests go out. `threshold` requests in a row that fail with a connection error, a
  timeout or a retryable status (408, 429, 5xx) open it.
- open: nothing goes out until `probe_at_ms`; then one request (the probe) does. The wait
  before probe n is min(max_s, initial_s * 2 ** (n - 1)).
- a probe that succeeds (any answer that is not a retryable failure) closes it; one that fails
  opens it again, for twice as long.

Apart from this, an answer of 429 or 503 with `Retry-After` pauses the whole lane for that long.
Pure: the lane passes the time in.
"""

from __future__ import annotations

from typing import Literal

State = Literal["closed", "open", "probing"]


class Circuit:
    def __init__(self, *, threshold: int = 5, initial_s: float = 1.0, max_s: float = 30.0) -> None:
        self.threshold = threshold
        self.initial_s = initial_s
        self.max_s = max_s
        self.state: State = "closed"
        self.failures_in_a_row = 0
        self.probes = 0  # failed probes since it opened
        self.probe_at_ms = 0
        self.opened_at_ms: int | None = None
        self.paused_until_ms = 0  # Retry-After on 429/503

    def may_send(self, now_ms: int) -> bool:
        """Whether a request may start now (closed and not paused)."""
        return self.state == "closed" and now_ms >= self.paused_until_ms

    def may_probe(self, now_ms: int) -> bool:
        return self.state == "open" and now_ms >= max(self.probe_at_ms, self.paused_until_ms)

    def wait_ms(self, now_ms: int) -> int:
        """How long until a request (or a probe) may start."""
        if self.state == "open":
            return max(0, max(self.probe_at_ms, self.paused_until_ms) - now_ms)
        if self.state == "probing":
            return 0
        return max(0, self.paused_until_ms - now_ms)

    def start_probe(self) -> None:
        self.state = "probing"

    def succeeded(self) -> bool:
        """A request got through; True when that closed an open circuit."""
        reopened = self.state != "closed"
        self.state = "closed"
        self.failures_in_a_row = 0
        self.probes = 0
        self.opened_at_ms = None
        return reopened

    def failed(self, now_ms: int, retry_after_s: float | None, status: int | None) -> None:
        """A request failed with a retryable error (connection, timeout, 408, 429, 5xx)."""
        if retry_after_s is not None and status in (429, 503):
            self.paused_until_ms = max(self.paused_until_ms, now_ms + round(retry_after_s * 1000))
        self.failures_in_a_row += 1
        if self.state == "probing":
            self.probes += 1
            self._open(now_ms)
        elif self.state == "closed" and self.failures_in_a_row >= self.threshold:
            self.probes = 0
            self.opened_at_ms = now_ms
            self._open(now_ms)

    def probe_interval_s(self) -> float:
        return float(min(self.max_s, self.initial_s * 2 ** min(self.probes, 32)))

    def _open(self, now_ms: int) -> None:
        self.state = "open"
        self.probe_at_ms = now_ms + round(self.probe_interval_s() * 1000)
