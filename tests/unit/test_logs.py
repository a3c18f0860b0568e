"""The JSON log lines: a logged exception carries its traceback, but not the values of the
variables of its frames (a destination's frames hold credentials and people's data)."""

from __future__ import annotations

import sys

import msgspec

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
