"""Reload benchmark: what `Running.reload(new_config)` costs while clients keep sending.

An in-process cdpd delivers to a local webhook sink while `--clients` clients post single-event
tracks as fast as they are answered. Every `--every` seconds the config is reloaded, switching a
second destination on and off (so delivery is stopped in order and started again each time).
It prints how long each reload took, the ingest latency (p50/p99/max) of requests answered
during reloads and outside them, and whether the sink got every message exactly once.

    .venv/bin/python bench/reload.py [--seconds 10] [--every 1] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import msgspec
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdpd import config as cdpd_config
from cdpd.app import running
from tests.helpers import WRITE_KEY, basic_auth, config_text


class Sink:
    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _take(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read())
        self.ids[f"{request.match_info['name']}:{body['messageId']}"] += 1
        return web.Response()


def _hook(name: str, url: str) -> str:
    return f'[[destinations]]\nname = "{name}"\ntype = "webhook"\nurl = "{url}/{name}"\n'


def _config(folder: Path, sink: Sink, *, second: bool) -> cdpd_config.Config:
    extra = '[logging]\naccess_log = false\nlevel = "warning"\n' + _hook("main", sink.url)
    if second:
        extra += _hook("second", sink.url)
    path = folder / ("two.toml" if second else "one.toml")
    path.write_text(config_text(folder / "var", extra))
    return cdpd_config.load(path)


async def _client(
    url: str, stop: asyncio.Event, first: int, latencies: list[tuple[float, float]]
) -> int:
    headers = {"Authorization": basic_auth(WRITE_KEY), "Content-Type": "application/json"}
    sent = 0
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            body = msgspec.json.encode(
                {"userId": "u", "event": "E", "messageId": f"c{first}-{sent}"}
            )
            started = time.perf_counter()
            async with http.post(f"{url}/v1/track", data=body, headers=headers) as response:
                assert response.status == 200, await response.text()
            latencies.append((started, time.perf_counter() - started))
            sent += 1
    return sent


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
        f"max {ordered[-1] * 1000:.2f} ms ({len(ordered)} requests)"
    )


async def main(seconds: float, every_s: float, clients: int) -> None:
    sink = Sink()
    await sink.start()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one, two = _config(folder, sink, second=False), _config(folder, sink, second=True)
        latencies: list[tuple[float, float]] = []
        windows: list[tuple[float, float]] = []
        async with running(one) as server:
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(_client(server.url, stop, n, latencies)) for n in range(clients)
            ]
            ends = time.perf_counter() + seconds
            second = False
            while time.perf_counter() < ends:
                await asyncio.sleep(every_s)
                second = not second
                started = time.perf_counter()
                await server.reload(two if second else one)
                windows.append((started, time.perf_counter()))
            stop.set()
            sent = sum(await asyncio.gather(*tasks))
            lane = server.delivery.lanes["main"]
            async with asyncio.timeout(60), lane.stats.recorded:
                await lane.stats.recorded.wait_for(
                    lambda: sum(1 for k in sink.ids if k.startswith("main:")) >= sent
                )
    await sink.stop()
    during = [d for s, d in latencies if any(a <= s <= b for a, b in windows)]
    outside = [d for s, d in latencies if not any(a <= s <= b for a, b in windows)]
    main_ids = {k: n for k, n in sink.ids.items() if k.startswith("main:")}
    reload_ms = [(b - a) * 1000 for a, b in windows]
    print(f"reloads:                {len(windows)}, each {statistics.median(reload_ms):.1f} ms "
          f"median, {max(reload_ms):.1f} ms max")  # fmt: skip
    print(f"ingest during reloads:  {_summary(during)}")
    print(f"ingest otherwise:       {_summary(outside)}")
    print(f"messages acknowledged:  {sent}")
    print(f"delivered to 'main':    {len(main_ids)} distinct, "
          f"{sum(main_ids.values()) - len(main_ids)} sent twice, "
          f"{sent - len(main_ids)} missing")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long clients send")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between reloads")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(args.seconds, args.every, args.clients))
