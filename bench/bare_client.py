"""The delivery ceiling: a bare aiohttp client posting the bodies cdpd would post, as fast as
the sink takes them, with the same concurrency. Prints events/s and CPU µs per event."""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import uvloop
from ingest import HERE

EVENT = (HERE / "post.lua").read_text().split("local event = '")[1].split("'\n")[0]


async def run(port: int, messages: int, concurrency: int, batch: int) -> tuple[float, float]:
    bodies = []
    for start in range(0, messages, batch):
        items = [EVENT % (n % 1000, "bare", n) for n in range(start, min(messages, start + batch))]
        bodies.append((items[0] if batch == 1 else '{"batch":[' + ",".join(items) + "]}").encode())
    url = f"http://127.0.0.1:{port}/hook"
    headers = {"Content-Type": "application/json"}
    queue = iter(bodies)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker() -> None:
            for body in queue:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu_us = (time.process_time() - cpu_started) * 1e6 / messages
        return messages / (time.perf_counter() - started), cpu_us


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rate, cpu_us = runner.run(run(args.port, args.messages, args.concurrency, args.batch))
        print(rate, cpu_us)


if __name__ == "__main__":
    main()
