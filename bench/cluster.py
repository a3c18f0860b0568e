"""Scale-out benchmark: ingest on the JetStream backend with one and two cdpd nodes, beside the
SQLite backend, in the same run, with what each costs in CPU.

Starts a three-server JetStream cluster on loopback (the machine's nats-server, replicas 3, as
tests/jetstream_cluster.py does) and loads each setup with wrk (bench/post.lua, ~800-byte track
events, each with its own messageId; with two nodes, one wrk per node, the connections split
between them). Setups:

    sqlite        one cdpd on the SQLite backend (the default)
    js-1          one cdpd node on JetStream (dedup markers on: the default)
    js-1-nodedup  the same with `dedup_window_s = 0` (Nats-Msg-Id only): what the markers cost
    js-2          two cdpd nodes on JetStream

For each: events/s acknowledged, p99 latency, and CPU seconds per 1,000 acknowledged messages
for the cdpd processes and for the three nats-server processes (user + system, from /proc),
then a check that the stream (or outbox) holds at least every acknowledged message. On this
2-core machine the cores are the ceiling, not the design: the CPU per message is the figure
that extrapolates (docs/scaling.md).

    .venv/bin/python bench/cluster.py [--duration 10] [--connections 32] [--setups sqlite,js-1,js-2]
        [--delivery]

`--delivery` then runs bench/cluster_delivery.py (its own cluster): a backlog delivered to a
local webhook sink by one and two `cdpd serve` nodes, events/s and CPU per 1,000 messages.

Needs wrk and nats-server (Debian packages wrk, nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import ingest as wrk_bench  # noqa: E402 (bench/ingest.py: wrk and /proc helpers)

from tests.jetstream_cluster import JetStreamCluster  # noqa: E402

SETUPS = ("sqlite", "js-1", "js-1-nodedup", "js-2")
MODES = {"batch100": 100, "single": 1}
QUICK_S = 0.1  # a ready node answers one event within this


@dataclass
class Outcome:
    setup: str
    mode: str
    events_per_s: float
    p99_ms: float
    errors: int
    cdpd_cpu_s_per_1k: float
    nats_cpu_s_per_1k: float
    stored_ok: str


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections in all")
    parser.add_argument(
        "--setups", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}"
    )
    parser.add_argument(
        "--delivery", action="store_true", help="then delivery (bench/cluster_delivery.py)"
    )
    args = parser.parse_args()
    outcomes = [
        run(setup, mode, args) for mode in args.modes.split(",") for setup in args.setups.split(",")
    ]
    print_table(outcomes)
    if args.delivery:
        import cluster_delivery

        cluster_delivery.main([])
    return 0


def run(setup: str, mode: str, args: argparse.Namespace) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="cdpd-cluster-bench-") as tmp:
        root = Path(tmp)
        cluster = JetStreamCluster(root / "jetstream") if setup.startswith("js") else None
        try:
            if cluster is not None:
                for index in range(3):
                    cluster.start(index)
                asyncio.run(cluster.ready())
            return measure(setup, mode, root, cluster, args)
        finally:
            if cluster is not None:
                cluster.stop_all()


def measure(
    setup: str, mode: str, root: Path, cluster: JetStreamCluster | None, args: argparse.Namespace
) -> Outcome:
    batch = MODES[mode]
    path = "/v1/track" if batch == 1 else "/v1/batch"
    nodes = 2 if setup == "js-2" else 1
    ports = [wrk_bench.free_port() for _ in range(nodes)]
    procs = [start_cdpd(setup, port, root / f"node{i}", cluster) for i, port in enumerate(ports)]
    nats_pids = [p.pid for p in cluster.processes if p is not None] if cluster else []
    try:
        for port in ports:
            until_answering_quickly(port)
        load(ports, path, batch, args.warmup, args.connections)
        before = stored(setup, root, cluster)
        cdpd_before = sum(wrk_bench.cpu_s(p.pid) for p in procs)
        nats_before = sum(wrk_bench.cpu_s(pid) for pid in nats_pids)
        outputs = load(ports, path, batch, args.duration, args.connections)
        cdpd_used = sum(wrk_bench.cpu_s(p.pid) for p in procs) - cdpd_before
        nats_used = sum(wrk_bench.cpu_s(pid) for pid in nats_pids) - nats_before
        acked = sum(wrk_bench.acknowledged_requests(o) for o in outputs) * batch
        kept = stored(setup, root, cluster) - before
    finally:
        for proc in procs:
            wrk_bench.stop(proc)
    parsed = [wrk_bench.parse_wrk(o, setup, mode, batch, 0.0) for o in outputs]
    outcome = Outcome(
        setup=setup,
        mode=mode,
        events_per_s=sum(p.events_per_s for p in parsed),
        p99_ms=max(p.p99_ms for p in parsed),
        errors=sum(p.errors for p in parsed),
        cdpd_cpu_s_per_1k=cdpd_used * 1000 / max(1, acked),
        nats_cpu_s_per_1k=nats_used * 1000 / max(1, acked),
        stored_ok="yes" if kept >= acked else f"NO ({kept} < {acked})",
    )
    print(
        f"{setup:>12} {mode:<8} {outcome.events_per_s:>9,.0f} events/s  p99 {outcome.p99_ms:7.2f}"
        f" ms  cpu/1k: cdpd {outcome.cdpd_cpu_s_per_1k:.3f} s, nats {outcome.nats_cpu_s_per_1k:.3f}"
        f" s  stored {outcome.stored_ok}",
        file=sys.stderr,
    )
    return outcome


def start_cdpd(
    setup: str, port: int, folder: Path, cluster: JetStreamCluster | None
) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True)
    storage = f'[storage]\ndata_dir = "{folder / "var"}"\nmin_free_disk_bytes = 0\n'
    if cluster is not None:
        servers = ", ".join(f'"{url}"' for url in cluster.urls)
        storage += 'backend = "jetstream"\n'
        storage += "dedup_window_s = 0\n" if setup == "js-1-nodedup" else ""
        storage += f"[storage.jetstream]\nservers = [{servers}]\n"
    config = folder / "cdpd.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n{storage}'
        f'[[sources]]\nname = "bench"\nwrite_key = "{wrk_bench.WRITE_KEY}"\n'
        "[console]\nenabled = false\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdpd", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=HERE.parent,
    )
    wrk_bench.wait_for_port(port, proc, timeout_s=30.0)
    return proc


def until_answering_quickly(port: int, timeout_s: float = 60.0) -> None:
    """Until a node answers one event within `QUICK_S` five times in a row: on a cluster just
    started, its first requests wait seconds for the streams' leaders to be elected, which a
    short warm-up would leave in the measured run."""
    body = b'{"userId": "u0", "event": "Ready Check"}'
    auth = "Basic " + base64.b64encode(f"{wrk_bench.WRITE_KEY}:".encode()).decode()
    quick, deadline = 0, time.monotonic() + timeout_s
    while quick < 5 and time.monotonic() < deadline:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/track",
            body,
            {"Content-Type": "application/json", "Authorization": auth},
        )
        started, fast = time.monotonic(), False
        with (
            contextlib.suppress(OSError),  # refused, or an error status: not ready yet
            urllib.request.urlopen(request, timeout=30) as answer,  # noqa: S310 (http, loopback)
        ):
            fast = answer.status == 200 and time.monotonic() - started < QUICK_S
        quick = quick + 1 if fast else 0
    if quick < 5:
        sys.exit(f"the node on port {port} did not answer quickly within {timeout_s:.0f} s")


def load(ports: list[int], path: str, batch: int, duration_s: int, connections: int) -> list[str]:
    """wrk against every node at once, the connections split between them."""
    outputs = [""] * len(ports)
    each = max(2, connections // len(ports))

    def one(index: int) -> None:
        outputs[index] = run_wrk(ports[index], path, batch, duration_s, each, seed=index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ports))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outputs


def run_wrk(port: int, path: str, batch: int, duration_s: int, connections: int, seed: int) -> str:
    """bench/ingest.py's wrk run, with a seed of its own (distinct message ids per node) and a
    timeout above the latencies a saturated cluster reaches."""
    env = {**os.environ, "CDPD_PATH": path, "CDPD_BATCH": str(batch), "CDPD_SEED": str(seed)}
    command = ["taskset", "-c", wrk_bench.CLIENT_CPU, "wrk", "-t2", f"-c{connections}"]
    command += [f"-d{duration_s}s", "--timeout", "10s", "--latency", "-s", str(HERE / "post.lua")]
    command.append(f"http://127.0.0.1:{port}")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return done.stdout


def stored(setup: str, root: Path, cluster: JetStreamCluster | None) -> int:
    if cluster is None:
        with sqlite3.connect(root / "node0" / "var" / "outbox.sqlite3") as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    return asyncio.run(_stream_messages(cluster.urls))


async def _stream_messages(urls: list[str]) -> int:
    import nats

    client = await nats.connect(urls)
    try:
        info = await client.jetstream().stream_info("CDPD")
        return int(info.state.messages)
    finally:
        await client.close()


def print_table(outcomes: list[Outcome]) -> None:
    print()
    print(
        "| setup | mode | events/s | p99 ms | errors | cdpd CPU s / 1k msgs"
        " | nats-server CPU s / 1k msgs | stored |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for o in outcomes:
        print(
            f"| {o.setup} | {o.mode} | {o.events_per_s:,.0f} | {o.p99_ms:.1f} | {o.errors} | "
            f"{o.cdpd_cpu_s_per_1k:.3f} | {o.nats_cpu_s_per_1k:.3f} | {o.stored_ok} |"
        )
    base = {o.mode: o.events_per_s for o in outcomes if o.setup == "sqlite"}
    for o in outcomes:
        if o.setup != "sqlite" and base.get(o.mode):
            print(f"{o.setup} {o.mode}: {o.events_per_s / base[o.mode]:.2f}x the SQLite backend")


if __name__ == "__main__":
    raise SystemExit(main())
