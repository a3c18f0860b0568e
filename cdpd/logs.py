"""structlog set-up: one JSON object per line on stdout, for journald.

Lines are written to a buffer that is flushed at once for warnings and errors, and otherwise
every FLUSH_INTERVAL_S by a task the daemon owns, so the per-request access line costs no
syscall of its own. Warnings and errors that libraries log through the standard `logging`
module (asyncio, aiohttp, aiormq ...) become lines of the same kind, with their `logger`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO

import msgspec
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from cdpd.model.timestamps import format_ms, now_ms

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FLUSH_INTERVAL_S = 0.2
LIBRARY_EVENT_MAX = 8192
# What aiohttp logs (with a traceback) about requests it cannot parse: bad client input.
BAD_CLIENT_INPUT = (HttpProcessingError, RequestPayloadError)
BAD_CLIENT_INPUT_LOG_EVERY_S = 10.0
_encoder = msgspec.json.Encoder(enc_hook=str)
LINE_TYPES = (bytes, str, bytearray)  # what a final processor may return as the whole line


class LineWriter:
    """A structlog logger that writes rendered lines to a binary stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def _write(self, line: bytes) -> None:
        self._stream.write(line + b"\n")

    def _write_now(self, line: bytes) -> None:
        self._stream.write(line + b"\n")
        self._stream.flush()

    def flush(self) -> None:
        self._stream.flush()

    debug = info = msg = _write
    warning = error = critical = exception = _write_now


def _render(logger: Any, method: str, event: MutableMapping[str, Any]) -> bytes:
    """The whole processor chain in one step: level, time, traceback as data, JSON."""
    event["level"] = _LEVEL_NAMES.get(method, method)
    event["timestamp"] = format_ms(now_ms())
    if "exc_info" in event:
        event = _tracebacks(logger, method, event)
    return _encoder.encode(event)


# Frames without their variables: a destination's frames hold credentials (headers, keys,
# webhook URLs) and the messages' personal data, which a log line must not carry.
_tracebacks = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)
_LEVEL_NAMES = {"exception": "error", "warn": "warning", "msg": "info"}


class AccessLog(structlog.BoundLoggerBase):
    """Writes the per-request line: the request's fields go through the processor chain as the
    dict they already are (this is the hottest log call, one per request). structlog's own
    `_process_event` would copy them twice, into the (empty) bound context and back out of
    keyword arguments."""

    def request(self, fields: dict[str, Any]) -> None:
        fields["event"] = "request"
        event: Any = fields
        try:
            for processor in self._processors:
                event = processor(self._logger, "info", event)
        except structlog.DropEvent:
            return
        if isinstance(event, LINE_TYPES):
            self._logger.info(event)
        elif isinstance(event, tuple):
            self._logger.info(*event[0], **event[1])
        else:
            self._logger.info(**event)


def access_log(level: str) -> AccessLog | None:
    """The access logger, or None when the configured level hides info lines."""
    if _LEVELS[level] > logging.INFO:
        return None
    logger: AccessLog = structlog.wrap_logger(None, wrapper_class=AccessLog).bind()
    return logger


class FromLogging(logging.Handler):
    """Passes a `logging` record on to structlog, as a line with the record's level (a custom
    level counts as the standard one below it), its message as the event (at most
    LIBRARY_EVENT_MAX characters, well under journald's line limit) and its logger's name."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._bad_input_logged_at = -BAD_CLIENT_INPUT_LOG_EVERY_S
        self._bad_input_unlogged = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.exc_info and isinstance(record.exc_info[1], BAD_CLIENT_INPUT):
                self._bad_client_input(record.exc_info[1])
                return
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            level = min(logging.CRITICAL, max(logging.DEBUG, record.levelno // 10 * 10))
            event = record.getMessage()[:LIBRARY_EVENT_MAX]
            structlog.get_logger().log(level, event, **fields)
        except Exception:
            self.handleError(record)

    def _bad_client_input(self, exc: BaseException) -> None:
        """A request aiohttp could not parse (a garbage request line, a bad Content-Length, a
        body that does not decode): the client's fault, so a warning without a traceback, at
        most one every BAD_CLIENT_INPUT_LOG_EVERY_S (the rest counted in the next one)."""
        now = time.monotonic()
        error = " ".join(str(exc).split())[:500]
        if now - self._bad_input_logged_at < BAD_CLIENT_INPUT_LOG_EVERY_S:
            self._bad_input_unlogged += 1
            structlog.get_logger().debug("bad_client_input", error=error)
            return
        structlog.get_logger().warning(
            "bad_client_input", error=error, similar_since_last_line=self._bad_input_unlogged
        )
        self._bad_input_logged_at, self._bad_input_unlogged = now, 0


def configure(level: str = "info", stream: BinaryIO | None = None) -> LineWriter:
    """Called once by the CLI; library code only asks structlog for loggers."""
    writer = LineWriter(stream or sys.stdout.buffer)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _render],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
    # Libraries' own info lines are chatter; their warnings and errors are worth a line.
    libraries = FromLogging(level=logging.WARNING)  # even where a library lowers its level
    logging.basicConfig(level=logging.WARNING, handlers=[libraries], force=True)
    return writer
