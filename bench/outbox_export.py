"""`cdpd outbox export` on a large outbox: its rate and peak memory.

Writes N ~800-byte track messages straight into a fresh outbox (as bench/backlog.py does), puts a
webhook destination's lane half way with a retrying row every 1,000 messages, then runs
`cdpd outbox export` (every message, then `--pending-only`) to a file as a child process and
prints messages/s, MB/s, the child's CPU seconds and its peak RSS. The export reads a chunk at
a time, so the peak must not grow with the outbox: compare --messages 100000 with the default.
Then imports the first --import-messages of the export into a three-server JetStream cluster on
loopback (started as tests/jetstream_cluster.py does) with `cdpd outbox import`, and prints the
same figures for it.

    .venv/bin/python bench/outbox_export.py [--messages 1000000] [--import-messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from backlog import fill  # noqa: E402 (bench/backlog.py)

from cdpd.model.timestamps import format_ms, now_ms  # noqa: E402
from tests.cluster_support import jetstream_text  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="outbox size")
    parser.add_argument(
        "--import-messages", type=int, default=20_000, help="how many of them to import (0: none)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdpd-export-") as name:
        tmp = Path(name)
        config = tmp / "cdpd.toml"
        config.write_text(
            f'[storage]\ndata_dir = "{tmp / "var"}"\nmin_free_disk_bytes = 0\n'
            '[[sources]]\nname = "bench"\nwrite_key = "wk_bench"\n'
            '[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:1/"\n'
        )
        began = time.perf_counter()
        outbox = tmp / "var" / "outbox.sqlite3"
        asyncio.run(fill(outbox, args.messages))
        _half_delivered(outbox, args.messages)
        print(f"wrote {args.messages:,} messages in {time.perf_counter() - began:.0f} s")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(
            "| export | messages written | seconds | messages read/s | MB/s | CPU s |"
            " messages/CPU s | peak RSS MB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for flags in (["--pending-only"], []):
            out = tmp / "export.jsonl"
            seconds, cpu_s, rss_mb = _run(
                ["export", *flags, "--output", str(out), "--config", str(config)]
            )
            lines = sum(1 for _ in out.open("rb")) - 1
            size_mb = out.stat().st_size / 1e6
            print(
                f"| export {' '.join(flags)} | {lines:,} | {seconds:.1f} |"
                f" {args.messages / seconds:,.0f} | {size_mb / seconds:.0f} | {cpu_s:.1f} |"
                f" {args.messages / cpu_s:,.0f} | {rss_mb:.0f} |"
            )
        if args.import_messages:
            asyncio.run(_import(tmp, tmp / "export.jsonl", args.import_messages))
    return 0


async def _import(tmp: Path, export: Path, count: int) -> None:
    part = tmp / "part.jsonl"
    with export.open("rb") as source, part.open("wb") as out:
        for _ in range(count + 1):
            out.write(source.readline())
    async with jetstream_cluster(tmp / "jetstream") as cluster:
        config = tmp / "js.toml"
        config.write_text(jetstream_text(tmp / "js", cluster.urls))
        seconds, cpu_s, rss_mb = await asyncio.to_thread(
            _run, ["import", "--input", str(part), "--config", str(config)]
        )
    print(
        f"| import into 3 servers | {count:,} | {seconds:.1f} | {count / seconds:,.0f} |"
        f" {part.stat().st_size / 1e6 / seconds:.0f} | {cpu_s:.1f} | {count / cpu_s:,.0f} |"
        f" {rss_mb:.0f} |"
    )


def _half_delivered(outbox: Path, count: int) -> None:
    at = format_ms(now_ms())
    with sqlite3.connect(outbox) as conn:
        conn.execute("UPDATE consumers SET seq = ? WHERE name = 'delivery:hook'", (count // 2,))
        conn.executemany(
            "INSERT INTO deliveries (destination, seq, message_id, state, attempts, created_at,"
            " next_attempt_at) VALUES ('hook', ?, ?, 'retrying', 1, ?, ?)",
            [(seq, f"bl-{seq - 1}", at, at) for seq in range(1, count // 2, 1000)],
        )


def _run(arguments: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of `cdpd outbox` with `arguments` (the
    machine may be busy: the CPU seconds are the figure to compare). The peak is the child's
    VmHWM, read while it runs: its rusage would count this process's pages it forked from."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdpd", "outbox", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=HERE.parent,
    )
    peak_kb = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_kb = max(peak_kb, _hwm_kb(proc.pid))
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"cdpd outbox {arguments[0]} exited {proc.returncode}")
    cpu_s = usage.ru_utime + usage.ru_stime
    return time.perf_counter() - began, cpu_s, peak_kb / 1024


def _hwm_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) if found else 0  # none once it exited


if __name__ == "__main__":
    raise SystemExit(main())
