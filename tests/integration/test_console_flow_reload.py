"""The Delivery Overview's counts across a live reload: what the replaced lanes delivered since
the last count is written with the next one, not lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp

from cdpd import config as cdpd_config
from cdpd.app import running
from tests.helpers import WRITE_KEY, FakeClock, basic_auth, config_text, query
from tests.sink import Sink


def _config(tmp_path: Path, data_dir: Path, text: str) -> cdpd_config.Config:
    path = tmp_path / "cdpd.toml"
    path.write_text(config_text(data_dir, text))
    return cdpd_config.load(path)


def _hook(name: str, url: str) -> str:
    return f'[[destinations]]\nname = "{name}"\ntype = "webhook"\nurl = "{url}"\n'


def _delivered(data_dir: Path, destination: str) -> int:
    rows = query(
        data_dir,
        "SELECT coalesce(sum(count), 0) FROM flow_counts"
        " WHERE scope = 'destination' AND name = ? AND metric = 'delivered'",
        (destination,),
    )
    return int(rows[0][0])


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110 (a table and a sink; no one event to wait on)
            await asyncio.sleep(0.02)


async def test_counts_of_replaced_lanes_survive_a_reload(
    tmp_path: Path, data_dir: Path, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()  # the counts are written only when the test moves time on
    async with Sink() as sink:
        before = _config(tmp_path, data_dir, _hook("hook_a", sink.url))
        after = _config(tmp_path, data_dir, _hook("hook_a", sink.url) + _hook("hook_c", sink.url))
        async with running(before, clock=clock) as server:
            batch = [
                {"type": "track", "userId": "u1", "event": "E", "messageId": f"m{n}"}
                for n in range(5)
            ]
            async with http.post(
                f"{server.url}/v1/batch",
                json={"batch": batch},
                headers={"Authorization": basic_auth(WRITE_KEY)},
            ) as resp:
                assert resp.status == 200
            await _until(lambda: len(sink.messages) == 5)
            await _until(lambda: server.delivery.lanes["hook_a"].stats.delivered == 5)
            await server.consumers.reload(after)  # hook_a's lane is replaced by a new one
            clock.advance(2)
            await _until(lambda: _delivered(data_dir, "hook_a") == 5)
