"""`server.shutdown_timeout_s` is the whole time SIGTERM takes: with a request whose body never
finishes and a destination that never answers, the daemon still exits within it (not after the
HTTP drain, then aiohttp's own shutdown wait, then delivery's drain, one after the other)."""

from __future__ import annotations

import asyncio
import configparser
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cdpd.config import DeliveryConfig, ServerConfig
from tests.helpers import PROJECT_ROOT, WRITE_KEY, basic_auth, config_text, spawn_cdpd
from tests.integration.test_delivery import hook
from tests.sink import Sink, hold

pytestmark = pytest.mark.system

SHUTDOWN_TIMEOUT_S = 3.0
# The interpreter's own exit, and the work between the waits, can take seconds on a busy
# machine. What must stay apart is the budget kept from phases waiting one after the other:
# two of them take two budgets or more (the hung delivery alone would drain for 30 s).
EXIT_SLACK_S = SHUTDOWN_TIMEOUT_S


async def test_sigterm_takes_at_most_shutdown_timeout_s_in_all(
    tmp_path: Path, data_dir: Path
) -> None:
    never = asyncio.Event()
    async with Sink(default=hold(never)) as sink:
        config = tmp_path / "cdpd.toml"
        text = config_text(data_dir, hook("hung", sink.url) + "[delivery]\ndrain_timeout_s = 30\n")
        config.write_text(
            text.replace("[server]\n", f"[server]\nshutdown_timeout_s = {SHUTDOWN_TIMEOUT_S}\n")
        )
        daemon = await spawn_cdpd(config)
        address = urlsplit(daemon.url)
        assert address.hostname is not None
        assert address.port is not None
        # A message whose delivery hangs, and an upload that never finishes.
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        body = b'{"userId": "u", "event": "E"}'
        head = (
            f"POST /v1/track HTTP/1.1\r\nHost: cdpd\r\nAuthorization: {basic_auth(WRITE_KEY)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await sink.wait_for_requests(1)
        assert sink.arrived == 1
        writer.write(head.replace(b"Content-Length: ", b"Content-Length: 1") + body[:5])
        await writer.drain()
        await asyncio.sleep(0.2)
        started = time.monotonic()
        try:
            code = await daemon.stop(timeout_s=60)
        finally:
            writer.close()
            never.set()
        took_s = time.monotonic() - started
    assert code == 0
    assert took_s < SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S, took_s


def test_the_unit_file_gives_the_default_shutdown_room_to_finish() -> None:
    """systemd sends SIGKILL after TimeoutStopSec: the whole drain must fit in it, with room for
    the interpreter to exit."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(PROJECT_ROOT / "systemd" / "cdpd.service")
    stop_timeout_s = float(unit["Service"]["TimeoutStopSec"])
    assert ServerConfig().shutdown_timeout_s + 5 <= stop_timeout_s
    assert DeliveryConfig().drain_timeout_s < ServerConfig().shutdown_timeout_s
