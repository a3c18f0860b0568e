"""Client connections: the limits that keep any one client from exhausting the daemon.

aiohttp bounds each header line and field, the number of headers and how long a connection may
sit idle; it has no bound on a request head's total size, on how long the head may take to
arrive, or on how many connections are open. Each accepted connection is therefore wrapped in a
`Guarded` protocol that watches the bytes of a request head before aiohttp parses them:

- a head bigger than `max_header_bytes` is answered 431 and the connection closed;
- a head not complete `header_timeout_s` after its first byte is answered 408 and closed
  (slowloris);
- at `max_connections`, a new connection closes the oldest one still waiting for a head (a
  slow or idle client), so clients that send a whole request promptly keep being served; when
  every connection is busy with a request, the new one gets 503.

Cut connections are counted by reason and logged at most once every `LOG_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web

log = structlog.get_logger()

LOG_INTERVAL_S = 10.0
LINGER_S = 2.0
HEAD_END = b"\r\n\r\n"

_STATUS_TEXT = {
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_MESSAGES = {
    "header_timeout": (408, "the request headers did not arrive within server.header_timeout_s"),
    "headers_too_large": (431, "the request headers are over server.max_header_bytes"),
    "connection_limit": (503, "cdpd has server.max_connections open connections; retry later"),
}


def _answer(reason: str) -> bytes:
    status, message = _MESSAGES[reason]
    body = msgspec.json.encode({"code": reason, "message": message})
    head = (
        f"HTTP/1.1 {status} {_STATUS_TEXT[status]}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """Makes guarded protocols for one listening socket and keeps the open ones."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_header_bytes: int,
        header_timeout_s: float,
        log_interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self._log_interval_s = log_interval_s
        # Insertion-ordered: the first ones are the oldest.
        self._open: dict[Guarded, None] = {}
        self.cut: dict[str, int] = {}  # since start, by reason (for tests and metrics)
        self._unlogged: dict[str, int] = {}
        self._logged_at_s = -log_interval_s
        self._log_handle: asyncio.TimerHandle | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def factory(self, make_handler: Callable[[], asyncio.Protocol]) -> Callable[[], Guarded]:
        """A protocol factory for `loop.create_server` around aiohttp's `web.Server`."""
        return lambda: Guarded(self, make_handler())

    def close(self) -> None:
        """Log what has not been logged yet."""
        if self._log_handle is not None:
            self._log_handle.cancel()
            self._log_handle = None
        self._flush_log()

    # -- what the request wrapper says ----------------------------------------------------------

    @staticmethod
    def request_started(request: web.Request) -> None:
        guarded = _guarded(request)
        if guarded is not None:
            guarded.busy()

    @staticmethod
    def request_finished(request: web.Request) -> None:
        guarded = _guarded(request)
        if guarded is not None:
            guarded.idle()

    # -- what the guarded connections say -------------------------------------------------------

    def opened(self, connection: Guarded) -> bool:
        """Admit `connection`, closing an older waiting one at the limit; False: refused."""
        if len(self._open) >= self.max_connections:
            victim = self._oldest_waiting()
            if victim is None:
                self._note("connection_limit")
                return False
            victim.cut("connection_limit")
        self._open[connection] = None
        return True

    def closed(self, connection: Guarded) -> None:
        self._open.pop(connection, None)

    def note_cut(self, reason: str) -> None:
        self._note(reason)

    def _oldest_waiting(self) -> Guarded | None:
        """The connection to close for a new one: the oldest that has begun a request head and
        not finished it (a slow client); else the oldest idle one that never sent a request;
        else the oldest idle one. A client that sends whole requests promptly is the last to
        lose its connection."""
        candidates: list[Guarded | None] = [None, None, None]
        for connection in self._open:
            if not connection.waiting or connection.closing:
                continue
            rank = 0 if connection.head_started_s is not None else (2 if connection.served else 1)
            current = candidates[rank]
            if current is None or (rank == 0 and connection.started_before(current)):
                candidates[rank] = connection
        return next((c for c in candidates if c is not None), None)

    def _note(self, reason: str) -> None:
        self.cut[reason] = self.cut.get(reason, 0) + 1
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        if self._log_handle is not None:
            return
        loop = asyncio.get_running_loop()
        wait_s = self._logged_at_s + self._log_interval_s - time.monotonic()
        if wait_s <= 0:
            self._flush_log()
        else:
            self._log_handle = loop.call_later(wait_s, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._log_handle = None
        self._flush_log()

    def _flush_log(self) -> None:
        if not self._unlogged:
            return
        log.warning(
            "http_connections_cut",
            cut=dict(sorted(self._unlogged.items())),
            open_connections=len(self._open),
            max_connections=self.max_connections,
            interval_s=self._log_interval_s,
        )
        self._unlogged = {}
        self._logged_at_s = time.monotonic()


def _guarded(request: web.Request) -> Guarded | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, Guarded) else None


class Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a watch on the bytes of request heads.
    `waiting`: no request is being handled, so the next bytes are a request head."""

    __slots__ = (
        "_admitted",
        "_guard",
        "_head_bytes",
        "_inner",
        "_tail",
        "_timer",
        "_transport",
        "head_started_s",
        "served",
        "waiting",
    )

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._head_bytes = 0
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self.waiting = True
        self.served = False  # has had a request handled
        self.head_started_s: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if not self._guard.opened(self):
            transport.write(_answer("connection_limit"))  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self.waiting and not self._watch_head(data):
            return
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._guard.closed(self)
        if self._admitted:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- state ----------------------------------------------------------------------------------

    def busy(self) -> None:
        """A request's head is in and its handler runs: no head limits until it is answered."""
        self.waiting = False
        self.served = True
        self._reset_head()

    def idle(self) -> None:
        self.waiting = True
        self._reset_head()

    @property
    def closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def started_before(self, other: Guarded) -> bool:
        return (self.head_started_s or 0.0) < (other.head_started_s or 0.0)

    def cut(self, reason: str) -> None:
        """Answer `reason`'s status and close. An idle connection closed to make room gets no
        answer: a client reusing it would take an answer to a request it has not sent."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._guard.note_cut(reason)
        self._stop_timer()
        if reason != "connection_limit" or self.head_started_s is not None:
            transport.write(_answer(reason))
        transport.close()

    def _watch_head(self, data: bytes) -> bool:
        """Count a request head's bytes; False when the connection was cut for them. A head
        that arrives whole in one read (the usual case) costs one search and no timer."""
        tail = self._tail
        window = tail + data if tail else data
        end = window.find(HEAD_END)
        size = self._head_bytes + (len(data) if end < 0 else end + 4 - len(tail))
        if size > self._guard.max_header_bytes:
            self.cut("headers_too_large")
            return False
        if end >= 0:
            self.busy()  # the handler says so too; a head without one (a 400) is answered
            return True
        if self.head_started_s is None:
            self.head_started_s = time.monotonic()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._guard.header_timeout_s, self.cut, "header_timeout")
        self._head_bytes = size
        self._tail = window[-3:]
        return True

    def _reset_head(self) -> None:
        self._stop_timer()
        self._head_bytes = 0
        self._tail = b""
        self.head_started_s = None

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def handler_args(max_headers: int, max_header_bytes: int, keepalive_timeout_s: float) -> Any:
    """aiohttp's own per-line and per-connection limits, for `web.AppRunner(**...)`."""
    line = min(8190, max_header_bytes)
    return {
        "max_headers": max_headers,
        "max_field_size": line,
        "max_line_size": line,
        "keepalive_timeout": keepalive_timeout_s,
        # After an answer given before the whole body was read (too large, too slow), what
        # is left of it is read and dropped for at most this long, so that the client sees
        # the answer rather than a reset; aiohttp's default is 10 s.
        "lingering_time": LINGER_S,
    }
