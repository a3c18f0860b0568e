"""Delivery on the JetStream backend: a backlog of N messages in a three-server cluster on
loopback, delivered by one and then two `cdpd serve` nodes to a local webhook sink in batches
of 100. Prints events/s delivered and the CPU seconds per 1,000
messages of the cdpd nodes and of the three JetStream servers, for each run.

    .venv/bin/python bench/cluster_delivery.py [--messages 50000] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import msgspec
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

from stream_backlog import publish_rows  # noqa: E402

from cdpd.cluster import connect  # noqa: E402
from cdpd.cluster.layout import Layout  # noqa: E402
from cdpd.config import JetStreamConfig  # noqa: E402
from cdpd.model.rows import OutboxRow  # noqa: E402
from cdpd.model.timestamps import format_ms, now_ms  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
# CDPD_BENCH_PROFILE=DIR: nodes run under cProfile and write DIR/node.prof when they stop.
PROFILE = os.environ.get("CDPD_BENCH_PROFILE")
LOGS = Path(os.environ.get("CDPD_BENCH_LOG", os.devnull))
PYTHON = [sys.executable, *(["-m", "cProfile", "-o", f"{PROFILE}/node.prof"] if PROFILE else [])]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class CountingSink:
    def __init__(self) -> None:
        self.delivered = 0
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read())
        self.delivered += len(body["batch"]) if "batch" in body else 1
        self.changed.set()
        return web.Response(status=200)

    async def wait_for(self, count: int) -> None:
        while self.delivered < count:
            self.changed.clear()
            await self.changed.wait()


def config_text(
    servers: list[str], url: str, destination: str, batch: int, data_dir: Path | str
) -> str:
    listed = ", ".join(f'"{s}"' for s in servers)
    return (
        f'[server]\nlisten = "127.0.0.1:0"\n'
        f'[storage]\nbackend = "jetstream"\ndata_dir = "{data_dir}"\n'
        f"[storage.jetstream]\nservers = [{listed}]\n"
        '[[sources]]\nname = "website"\nwrite_key = "wk"\n'
        f'[[destinations]]\nname = "{destination}"\ntype = "webhook"\nurl = "{url}"\n'
        f"batch_size = {batch}\nconcurrency = 4\n"
    )


def start_nodes(configs: list[Path]) -> list[subprocess.Popen[bytes]]:
    """`cdpd serve` per config, each returned once it logs that it listens."""
    nodes = [
        subprocess.Popen(
            [*PYTHON, "-m", "cdpd", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        for config in configs
    ]
    for node in nodes:
        assert node.stdout is not None
        for line in node.stdout:
            if b'"listening"' in line:
                break
        else:
            raise SystemExit("a cdpd node did not start")
        # Its log lines follow on the same pipe: read them, or a full pipe stalls the node.
        threading.Thread(target=_keep_log, args=(node.stdout, LOGS), daemon=True).start()
    return nodes


def _keep_log(lines: IO[bytes], path: Path) -> None:
    with path.open("ab") as log:
        for line in lines:
            log.write(line)


def stop_nodes(nodes: list[subprocess.Popen[bytes]]) -> None:
    for node in nodes:
        node.terminate()
    for node in nodes:
        node.wait(30)


async def publish(jetstream: JetStreamConfig, count: int, run: str) -> None:
    """`count` messages with ids unique to `run` (JetStream drops a repeated id in its window)."""
    payload = '{"type":"track","event":"Bench","properties":{"n":1}}'
    rows = (
        OutboxRow(f"{run}-{n}", "website", "track", "Bench", f"u{n % 997}", None, at, payload)
        for n in range(count)
        for at in [format_ms(now_ms())]
    )
    async with connect.connected(jetstream, name="bench") as client:
        js = client.jetstream()
        await publish_rows(js, Layout.of(jetstream), rows, by_source=True, at_once=1000)


async def run(args: argparse.Namespace) -> None:
    sink = CountingSink()
    app = web.Application()
    app.router.add_post("/hook", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    with tempfile.TemporaryDirectory() as tmp:
        async with jetstream_cluster(Path(tmp) / "js") as cluster:
            jetstream = msgspec.convert({"servers": cluster.urls}, JetStreamConfig)
            async with connect.connected(jetstream) as client:
                await connect.ensure(client.jetstream(), jetstream, Layout.of(jetstream))
            servers = [p.pid for p in cluster.processes if p is not None]
            print(f"messages={args.messages} batch={args.batch} (3 JetStream servers, R3)")
            for count in args.nodes:
                configs = []
                for n in range(count):
                    config = Path(tmp) / f"nodes{count}-{n}.toml"
                    data_dir = Path(tmp) / f"nodes{count}-{n}"
                    config.write_text(
                        config_text(cluster.urls, url, f"hook{count}", args.batch, data_dir)
                    )
                    configs.append(config)
                stop_nodes(start_nodes(configs))  # creates the consumer, then stops
                await publish(jetstream, args.messages, f"nodes{count}")
                sink.delivered = 0
                js_before = sum(cpu_s(pid) for pid in servers)
                began = time.perf_counter()
                nodes = start_nodes(configs)
                try:
                    async with asyncio.timeout(args.timeout_s):
                        await sink.wait_for(args.messages)
                except TimeoutError:
                    stop_nodes(nodes)
                    async with connect.connected(jetstream) as client:
                        layout = Layout.of(jetstream)
                        js = client.jetstream()
                        info = await js.consumer_info(
                            layout.stream, layout.delivery_consumer(f"hook{count}")
                        )
                        print(f"nodes={count}: stuck at {sink.delivered} delivered; {info}")
                    continue
                elapsed = time.perf_counter() - began
                cdpd_cpu = sum(cpu_s(node.pid) for node in nodes)
                js_cpu = sum(cpu_s(pid) for pid in servers) - js_before
                stop_nodes(nodes)
                per_k = 1000 / args.messages
                print(
                    f"nodes={count}  {args.messages / elapsed:,.0f} events/s delivered"
                    f"  cdpd {cdpd_cpu * per_k:.3f} CPU s/1k msgs"
                    f"  JetStream {js_cpu * per_k:.3f} CPU s/1k msgs"
                )
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="backlog size")
    parser.add_argument("--batch", type=int, default=100, help="webhook batch_size")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="give up a run after")
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=[1, 2], help="node counts to run (default 1 2)"
    )
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
