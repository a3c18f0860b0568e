"""Delivery benchmark: outbox to a local sink, against a bare aiohttp client, in the same run.

1. Throughput. N archived messages are queued for a webhook destination (`cdpd replay`), then
   cdpd (pinned to core 0) delivers the backlog to a sink on core 1: one message per request,
   then batches of 100. In the same run a bare aiohttp client (core 0, same concurrency) posts
   the same bodies to the same sink: the ceiling.
2. End-to-end latency. Single-event POSTs at a steady 1,000 events/s; the time from cdpd's
   acknowledgement to the sink's receipt of the same messageId, p50/p99.

    python bench/deliver.py [--messages 20000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import uvloop
from ingest import HERE, WRITE_KEY, free_port, peak_rss_mb, stop, wait_for_port

EVENT = (HERE / "post.lua").read_text().split("local event = '")[1].split("'\n")[0]
SERVER_CPU, CLIENT_CPU = "0", "1"


class SinkProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 receiver: reads Content-Length bodies, answers 200, notes arrivals."""

    OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:  # uvloop's is not an asyncio.Transport
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower() + b"\r\n"
            start = head.find(b"content-length:")
            length = int(head[start + 15 : head.find(b"\r\n", start)]) if start >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.sink.arrived(body)
            self.transport.write(self.OK)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sink:
    def __init__(self, track_ids: bool = False, expect: int = 0) -> None:
        self.pid = 0  # the sender's, when its CPU time is counted from first arrival to last
        self.cpu_at_first = self.cpu_at_last = 0.0
        self.messages_at_first = 0
        self.requests = 0
        self.messages = 0
        self.expect = expect
        self.complete = asyncio.Event()  # set once `expect` messages have arrived
        self.first_at = 0.0
        self.last_at = 0.0
        self.track_ids = track_ids
        self.received_at: dict[str, float] = {}

    def arrived(self, body: bytes) -> None:
        self.last_at = time.perf_counter()
        count = body.count(b'"messageId"')
        if not self.requests:
            self.first_at = self.last_at
            self.messages_at_first = count
            if self.pid:
                self.cpu_at_first = cpu_seconds(self.pid)
        self.requests += 1
        self.messages += count
        if self.expect and self.messages >= self.expect and not self.complete.is_set():
            if self.pid:
                self.cpu_at_last = cpu_seconds(self.pid)
            self.complete.set()
        if self.track_ids:
            now = time.perf_counter()
            for item in _message_ids(body):
                self.received_at.setdefault(item, now)


def _message_ids(body: bytes) -> list[str]:
    decoded = msgspec.json.decode(body)
    items = decoded.get("batch", [decoded])
    return [item["messageId"] for item in items]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-seconds", type=int, default=10)
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(args))


async def run(args: argparse.Namespace) -> int:
    rows = []
    for batch_size in (1, 100):
        cdpd_rate, cdpd_cpu, rss = await cdpd_throughput(
            args.messages, args.concurrency, batch_size
        )
        bare_rate, bare_cpu = await bare_throughput(args.messages, args.concurrency, batch_size)
        rows.append((batch_size, cdpd_rate, bare_rate, cdpd_cpu, bare_cpu, rss))
    p50, p99, rate = await end_to_end_latency(args.latency_seconds)
    print(
        "| delivery | cdpd events/s | bare client events/s | cdpd/bare by rate "
        "| CPU µs/event cdpd | bare | cdpd/bare by CPU | cdpd peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch_size, cdpd_rate, bare_rate, cdpd_cpu, bare_cpu, rss in rows:
        label = "one per request" if batch_size == 1 else f"batches of {batch_size}"
        print(
            f"| {label} | {cdpd_rate:,.0f} | {bare_rate:,.0f} | {cdpd_rate / bare_rate:.2f} "
            f"| {cdpd_cpu:.1f} | {bare_cpu:.1f} | {bare_cpu / cdpd_cpu:.2f} | {rss:.0f} |"
        )
    print()
    print(f"end to end at {rate:,.0f} events/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    return 0


async def cdpd_throughput(
    count: int, concurrency: int, batch_size: int
) -> tuple[float, float, float]:
    """Events/s, CPU µs per event (cdpd's threads together) and peak RSS."""
    sink = Sink(expect=count)
    server = await asyncio.get_running_loop().create_server(
        lambda: SinkProtocol(sink), "127.0.0.1", 0
    )
    sink_port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="cdpd-deliver-") as tmp:
        port = free_port()
        plain = _config(Path(tmp), port, destination=None)
        with_hook = _config(Path(tmp), port, destination=(sink_port, concurrency, batch_size))
        await _ingest(plain, port, count)
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cdpd", "replay", "--destination", "hook",
             "--since", "2000-01-01", "--config", str(with_hook)],
            check=True, capture_output=True, cwd=HERE.parent,
        )  # fmt: skip
        proc = await _start_cdpd(with_hook, port, sink)
        await asyncio.wait_for(sink.complete.wait(), 300)
        rss = peak_rss_mb(proc.pid)
        stop(proc)
    server.close()
    # From first to last arrival: start-up excluded.
    rate = count / (sink.last_at - sink.first_at)
    cpu_us = (sink.cpu_at_last - sink.cpu_at_first) * 1e6 / (count - sink.messages_at_first)
    print(f"cdpd  batch {batch_size:>3}: {rate:,.0f} /s, {cpu_us:.1f} µs CPU", file=sys.stderr)
    return rate, cpu_us, rss


async def bare_throughput(count: int, concurrency: int, batch_size: int) -> tuple[float, float]:
    sink = Sink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SinkProtocol(sink), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    done = await asyncio.to_thread(
        subprocess.run,
        ["taskset", "-c", SERVER_CPU, sys.executable, str(HERE / "bare_client.py"),
         "--port", str(port), "--messages", str(count), "--concurrency", str(concurrency),
         "--batch", str(batch_size)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    # The sink runs in this process: let it finish reading before the client's figure is used.
    server.close()
    rate, cpu_us = (float(f) for f in (done.stdout.split() or ["nan", "nan"]))
    print(f"bare  batch {batch_size:>3}: {rate:,.0f} /s, {cpu_us:.1f} µs CPU", file=sys.stderr)
    return rate, cpu_us


async def end_to_end_latency(seconds: int) -> tuple[float, float, float]:
    sink = Sink(track_ids=True, expect=seconds * 1000)
    server = await asyncio.get_running_loop().create_server(
        lambda: SinkProtocol(sink), "127.0.0.1", 0
    )
    sink_port = server.sockets[0].getsockname()[1]
    acked: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cdpd-latency-") as tmp:
        port = free_port()
        config = _config(Path(tmp), port, destination=(sink_port, 8, 1))
        proc = await _start_cdpd(config, port)
        url = f"http://127.0.0.1:{port}/v1/track"
        headers = {"Authorization": "Basic d2tfYmVuY2g6"}
        async with aiohttp.ClientSession() as http:
            interval = 1 / 1000
            begin = time.perf_counter()
            pending = set()
            for n in range(seconds * 1000):
                await asyncio.sleep(max(0.0, begin + n * interval - time.perf_counter()))
                pending.add(asyncio.ensure_future(_post_one(http, url, headers, n, acked)))
                pending = {task for task in pending if not task.done()}
            await asyncio.gather(*pending)
            rate = len(acked) / (time.perf_counter() - begin)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.complete.wait(), 30)
        stop(proc)
    server.close()
    latencies = sorted(
        (sink.received_at[m] - acked[m]) * 1000 for m in acked if m in sink.received_at
    )
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    return p50, p99, rate


async def _post_one(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int, acked: dict[str, float]
) -> None:
    message_id = f"lat-{n}"
    body = (EVENT % (n % 1000, "lat", n)).replace(f"bench-lat-{n}", message_id)
    async with http.post(url, data=body.encode(), headers=headers) as resp:
        await resp.read()
        if resp.status == 200:
            acked[message_id] = time.perf_counter()


async def _ingest(config: Path, port: int, count: int) -> None:
    proc = await _start_cdpd(config, port)
    headers = {"Authorization": "Basic d2tfYmVuY2g6"}
    async with aiohttp.ClientSession() as http:
        for start in range(0, count, 500):
            items = ",".join(
                EVENT % (n % 1000, "deliver", n) for n in range(start, min(count, start + 500))
            )
            body = ('{"batch":[' + items + "]}").encode()
            async with http.post(
                f"http://127.0.0.1:{port}/v1/batch", data=body, headers=headers
            ) as resp:
                assert resp.status == 200
    stop(proc)


def _config(tmp: Path, port: int, destination: tuple[int, int, int] | None) -> Path:
    path = tmp / ("with-hook.toml" if destination else "plain.toml")
    text = (
        f'[server]\nlisten = "127.0.0.1:{port}"\n[logging]\naccess_log = false\n'
        f'[storage]\ndata_dir = "{tmp / "var"}"\nmin_free_disk_bytes = 0\n'
        f'[[sources]]\nname = "bench"\nwrite_key = "{WRITE_KEY}"\n'
    )
    if destination:
        sink_port, concurrency, batch_size = destination
        text += (
            f'[[destinations]]\nname = "hook"\ntype = "webhook"\n'
            f'url = "http://127.0.0.1:{sink_port}/hook"\n'
            f"concurrency = {concurrency}\nbatch_size = {batch_size}\n"
        )
    path.write_text(text)
    return path


async def _start_cdpd(config: Path, port: int, sink: Sink | None = None) -> subprocess.Popen[bytes]:
    command = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "cdpd", "serve"]
    proc = await asyncio.to_thread(
        functools.partial(
            subprocess.Popen,
            [*command, "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=HERE.parent,
        )
    )
    if sink is not None:
        sink.pid = proc.pid  # taskset execs cdpd: the pid is cdpd's own
    await asyncio.to_thread(wait_for_port, port, proc)  # the sink in this loop keeps serving
    return proc


if __name__ == "__main__":
    raise SystemExit(main())
