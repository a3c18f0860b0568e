"""The JSON log lines: a logged exception carries its traceback, but not the values of the
variables of its frames (a destination's frames hold credentials and people's data)."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import msgspec
import pytest
import structlog

from cdpd import logs

SECRET = "amplitude-key-Rb73u"


def _fail_holding(api_key: str) -> None:
    body = b'{"api_key":"' + api_key.encode() + b'","events":[]}'
    raise ValueError(f"cannot send {len(body)} bytes")


def test_a_logged_exception_shows_its_frames_but_not_their_values() -> None:
    try:
        _fail_holding(SECRET)
    except ValueError:
        line = logs._render(None, "exception", {"event": "send_failed", "exc_info": sys.exc_info()})
    assert SECRET not in line.decode()
    (exception,) = msgspec.json.decode(line)["exception"]
    assert exception["exc_value"] == "cannot send 45 bytes"
    assert [frame["name"] for frame in exception["frames"]][-1] == "_fail_holding"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """`logs.configure` sets up structlog and the root logger for the process: put them back
    (the root's handlers are set aside first, so that configure does not close them)."""
    structlog_config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    yield
    structlog.configure(**structlog_config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_libraries_warnings_become_json_lines_and_their_chatter_does_not() -> None:
    stream = io.BytesIO()
    writer = logs.configure("info", stream)
    remote = "amqp://guest:******@127.0.0.1:5672/"
    logging.getLogger("aiormq.connection").warning("Connection lost from %s", remote)
    logging.getLogger("aiohttp.access").info("GET / 200")
    chatty = logging.getLogger("chatty")
    chatty.setLevel(logging.DEBUG)  # a library that lowers its own level
    chatty.info("a detail")
    chatty.log(35, "a level of its own: counted as a warning")
    chatty.error("x" * 20_000)
    try:
        _fail_holding(SECRET)
    except ValueError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    writer.flush()
    lines = [msgspec.json.decode(line) for line in stream.getvalue().splitlines()]
    ours = [line for line in lines if line["logger"] in ("aiormq.connection", "chatty", "asyncio")]
    assert [(line["logger"], line["level"], line["event"][:60]) for line in ours] == [
        ("aiormq.connection", "warning", f"Connection lost from {remote}"),
        ("chatty", "warning", "a level of its own: counted as a warning"),
        ("chatty", "error", "x" * 60),
        ("asyncio", "error", "Task exception was never retrieved"),
    ]
    assert len(ours[2]["event"]) == logs.LIBRARY_EVENT_MAX
    assert ours[3]["exception"][0]["exc_value"] == "cannot send 45 bytes"
    assert SECRET not in stream.getvalue().decode()
