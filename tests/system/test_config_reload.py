"""SIGHUP reloads the whole configuration of a running `cdpd serve`, conf.d/ fragments included:
a source and a destination added by writing one file are in force without a restart, and a
fragment that does not validate is refused with the old config kept."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from cdpd import __version__
from tests.helpers import Daemon, basic_auth, config_text, spawn_cdpd


async def _logged(daemon: Daemon, event: str, count: int) -> dict[str, Any]:
    for _ in range(600):
        found = [line for line in daemon.log_lines if line.get("event") == event]
        if len(found) >= count:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{event} was not logged {count} times")


async def _post(http: aiohttp.ClientSession, url: str, key: str, ids: range) -> int:
    batch = [{"type": "track", "userId": "u", "event": "E", "messageId": f"m{n}"} for n in ids]
    headers = {"Authorization": basic_auth(key)}
    async with http.post(f"{url}/v1/batch", json={"batch": batch}, headers=headers) as response:
        return response.status


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [msgspec.json.decode(raw) for raw in path.read_bytes().splitlines()]


async def _lines(path: Path, count: int) -> list[dict[str, Any]]:
    for _ in range(600):
        lines = _read_lines(path)
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines")


async def test_sighup_puts_a_conf_d_fragment_in_force(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "cdpd.toml"
    config.write_text('include = "conf.d"\n' + config_text(data_dir))
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    archive = tmp_path / "archive.ndjson"
    daemon = await spawn_cdpd(config)
    started = next(line for line in daemon.log_lines if line["event"] == "listening")
    assert started["version"] == __version__
    assert started["sources"] == ["website", "backend"]  # the enabled ones
    assert (started["destinations"], started["warehouses"]) == ([], [])
    assert started["admin_api"] == "off"
    await _logged(daemon, "admin_api_off", 1)
    try:
        async with aiohttp.ClientSession() as http:
            assert await _post(http, daemon.url, "wk_test", range(0, 10)) == 200
            assert await _post(http, daemon.url, "wk_app", range(100, 101)) == 401
            (conf_d / "10-app.toml").write_text(
                '[[sources]]\nname = "app"\nwrite_key = "wk_app"\n'
                f'[[destinations]]\nname = "archive"\ntype = "file"\npath = "{archive}"\n'
                'fsync = "none"\n'
            )
            daemon.proc.send_signal(signal.SIGHUP)
            reloaded = await _logged(daemon, "config_reloaded", 1)
            assert reloaded["changed"] == ["sources", "destinations"]
            assert await _post(http, daemon.url, "wk_app", range(100, 105)) == 200
            assert await _post(http, daemon.url, "wk_test", range(10, 15)) == 200
            lines = await _lines(archive, 10)
            # A fragment that does not validate: refused, logged, the old config kept.
            (conf_d / "20-bad.toml").write_text(
                '[[destinations]]\nname = "archive"\ntype = "file"\n'
            )
            daemon.proc.send_signal(signal.SIGHUP)
            failed = await _logged(daemon, "config_reload_failed", 1)
            assert "missing required field `path`" in failed["error"]
            assert await _post(http, daemon.url, "wk_app", range(105, 106)) == 200
            lines = await _lines(archive, 11)
    finally:
        assert await daemon.stop() == 0
    ids = sorted(line["messageId"] for line in lines)
    assert ids == sorted([f"m{n}" for n in range(100, 106)] + [f"m{n}" for n in range(10, 15)])
