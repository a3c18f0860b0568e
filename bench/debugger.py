"""What the live debugger costs ingest: CPU time per event with nobody watching and with a
person watching the source's debugger, in one process (client and server together, so both
figures carry the same client cost), runs alternated.

    python bench/debugger.py [--runs 3] [--requests 300] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.console import access, state

PASSWORD = "bench-password"  # noqa: S105 (a throwaway person in a temporary dir)
CONCURRENCY = 10


async def measure(root: Path, watch: bool, requests: int, batch: int) -> tuple[float, int]:
    """CPU microseconds per event, and how many events the watcher received."""
    path = root / "cdpd.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:0"\n[logging]\naccess_log = false\n'
        f'[storage]\ndata_dir = "{root / "var"}"\nmin_free_disk_bytes = 0\n'
        '[[sources]]\nname = "web"\nwrite_key = "wk"\n'
        '[[workspaces]]\nname = "bench"\nsources = ["web"]\n'
    )
    config = cdpd_config.load(path)
    async with state.connect(config.console.state_path(config.storage.data_dir)) as conn:
        await state.add_person(conn, "bench", access.hash_password(PASSWORD))
        await state.set_role(conn, "bench", "bench", "read-only")
    received = [0]
    async with (
        running(config) as server,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        signin = {"name": "bench", "password": PASSWORD}
        async with http.post(f"{server.url}/console/signin", data=signin) as resp:
            assert resp.status == 200

        async def watch_stream() -> None:
            async with http.get(f"{server.url}/console/w/bench/sources/web/debugger") as resp:
                async for line in resp.content:
                    received[0] += line.startswith(b"data: ")

        watcher = asyncio.create_task(watch_stream()) if watch else None
        await asyncio.sleep(0.3)
        body = json.dumps(
            {
                "batch": [
                    {"type": "track", "event": "Order", "userId": "u1", "properties": {"n": i}}
                    for i in range(batch)
                ]
            }
        ).encode()
        headers = {"Authorization": "Basic d2s6", "Content-Type": "application/json"}

        async def post() -> None:
            async with http.post(f"{server.url}/v1/batch", data=body, headers=headers) as resp:
                assert resp.status == 200

        started = time.process_time()
        for _ in range(requests // CONCURRENCY):
            await asyncio.gather(*(post() for _ in range(CONCURRENCY)))
        used_s = time.process_time() - started
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return used_s * 1e6 / (requests // CONCURRENCY * CONCURRENCY * batch), received[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    figures: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.runs):
        for watch in (False, True):
            with tempfile.TemporaryDirectory(prefix="cdpd-debugger-bench-") as tmp:
                cpu_us, received = asyncio.run(measure(Path(tmp), watch, args.requests, args.batch))
            figures[watch].append(cpu_us)
            label = "watched" if watch else "nobody watching"
            print(f"{label:>16}: {cpu_us:6.1f} µs CPU/event, {received} events streamed",
                  file=sys.stderr)  # fmt: skip
    print(f"| debugger | CPU µs/event (median of {args.runs}, batches of {args.batch}) |")
    print("|---|---|")
    print(f"| nobody watching | {statistics.median(figures[False]):.1f} |")
    print(f"| one person watching | {statistics.median(figures[True]):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
