"""SIGHUP reloads the configuration (here its tracking plans) of a running `cdpd serve`
without losing a message."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import msgspec

from tests.governance_plans import PLAN, governed_config, write_plan
from tests.helpers import Daemon, basic_auth, query, spawn_cdpd

AUTH = {"Authorization": basic_auth("wk_test")}
STRICT = "[sources.protocols.track]\nallowUnplannedEvents = false\n"
REQUESTS = 40
PER_REQUEST = 50


async def _reloads_logged(daemon: Daemon, count: int) -> None:
    """Wait until the daemon has logged `count` reloads (polling its log, no fixed delay)."""
    for _ in range(600):
        done = [
            line for line in daemon.log_lines if line.get("event", "").startswith("config_reload")
        ]
        if len(done) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} reloads were not logged: {done}")


async def _post(http: aiohttp.ClientSession, url: str, event: str, first: int, count: int) -> None:
    batch = [
        {"type": "track", "userId": "u", "event": event, "messageId": f"{event}-{n}",
         "properties": {"order_id": str(n)}}
        for n in range(first, first + count)
    ]  # fmt: skip
    body = msgspec.json.encode({"batch": batch})
    async with http.post(f"{url}/v1/batch", data=body, headers=AUTH) as response:
        assert response.status == 200


async def test_sighup_reloads_plans_under_load_and_loses_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    plan = write_plan(tmp_path / "plan.json")
    config = tmp_path / "cdpd.toml"
    config.write_text(governed_config(data_dir, plan, STRICT))
    daemon = await spawn_cdpd(config)
    try:
        async with aiohttp.ClientSession() as http:
            await _post(http, daemon.url, "Refund Issued", 0, 1)  # not planned yet: blocked

            async def load() -> None:
                for n in range(REQUESTS):
                    await _post(http, daemon.url, "Order Completed", n * PER_REQUEST, PER_REQUEST)

            async def reload() -> None:
                for count in range(1, 4):
                    daemon.proc.send_signal(signal.SIGHUP)
                    await _reloads_logged(daemon, count)

            await asyncio.gather(load(), reload())
            # A plan that does not load leaves the one in force.
            plan.write_text("{")
            daemon.proc.send_signal(signal.SIGHUP)
            await _reloads_logged(daemon, 4)
            await _post(http, daemon.url, "Refund Issued", 1, 1)
            # Now the event is planned: it passes.
            write_plan(plan, {"rules": [*PLAN["rules"], {"type": "TRACK", "key": "Refund Issued"}]})
            daemon.proc.send_signal(signal.SIGHUP)
            await _reloads_logged(daemon, 5)
            await _post(http, daemon.url, "Refund Issued", 2, 1)
    finally:
        assert await daemon.stop() == 0
    events = [
        line["event"] for line in daemon.log_lines if line["event"].startswith("config_reload")
    ]
    assert events == ["config_reloaded"] * 3 + [
        "config_reload_failed",
        "config_reloaded",
    ]
    stored = query(data_dir, "SELECT event, count(*) FROM messages GROUP BY event ORDER BY event")
    assert stored == [("Order Completed", REQUESTS * PER_REQUEST), ("Refund Issued", 1)]
    blocked = query(data_dir, "SELECT message_id FROM blocked_messages ORDER BY id")
    assert blocked == [("Refund Issued-0",), ("Refund Issued-1",)]
