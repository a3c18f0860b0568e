"""CPU instructions per request, cdpd against a bare aiohttp server: a noise-free companion to
bench/ingest.py.

Wall-clock figures on a shared machine swing by tens of percent between runs; instruction counts
under valgrind's callgrind do not. Each server runs under callgrind, takes a warm-up, has its
counters zeroed, then serves a fixed number of single-event `POST /v1/track` requests (16 at a
time, ~800-byte events, each with its own messageId). Counts include every thread (cdpd's SQLite
writer too). Instructions are not time (cache misses are not counted), so read the ratio next
to bench/ingest.py's.

    python bench/instructions.py --plan [--batch 100]   # also cdpd with a 50-event plan
    python bench/instructions.py --privacy [--batch 100]  # also cdpd, 1,000 users suppressed
    python bench/instructions.py [--requests 2000] [--batch 100] [--baseline DIR]

`--batch N` posts N events per `POST /v1/batch` instead (counts are then per event as well);
`--baseline DIR` also counts the cdpd checkout in DIR, for a before/after comparison.

Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from ingest import (
    HERE,
    PLAN_SETTINGS,
    WRITE_KEY,
    free_port,
    plan_config,
    suppress_users,
    wait_for_port,
)

EVENT = re.search(r"local event = '(.*)'\n", (HERE / "post.lua").read_text()).group(1)  # type: ignore[union-attr]
AUTH = {"Authorization": "Basic d2tfYmVuY2g6"}  # wk_bench:
CONCURRENCY = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1, help="events per request")
    parser.add_argument("--baseline", type=Path, help="a checkout of cdpd to count as well")
    parser.add_argument(
        "--plan", action="store_true", help="also cdpd with a 50-event tracking plan, all checks on"
    )
    parser.add_argument(
        "--privacy", action="store_true", help="also cdpd with a 1,000-user suppression list"
    )
    parser.add_argument(
        "--config",
        default="",
        help='TOML added to cdpd\'s config, e.g. "[logging]\\naccess_log = false"',
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    names = ("bare", "base", "cdpd") if args.baseline else ("bare", "cdpd")
    if args.plan:
        names = ("bare", "cdpd", "cdpd+plan")
    if args.privacy:
        names = ("bare", "cdpd", "cdpd+privacy")
    counts = {server: measure(server, args) for server in names}
    print(f"| server | instructions per request | per event ({args.batch}/request) | bare/cdpd |")
    print("|---|---|---|---|")
    for server, count in counts.items():
        print(
            f"| {server} | {count:,.0f} | {count / args.batch:,.0f} "
            f"| {counts['bare'] / count:.2f} |"
        )
    return 0


def measure(server: str, args: argparse.Namespace) -> float:
    requests = args.requests
    cwd = args.baseline if server == "base" else HERE.parent
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cdpd-instr-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        if server == "bare":
            command += [str(HERE / "bare_server.py"), "--port", str(port)]
        else:
            config = Path(tmp) / "cdpd.toml"
            config.write_text(
                f'[server]\nlisten = "127.0.0.1:{port}"\n'
                f'[storage]\ndata_dir = "{Path(tmp) / "var"}"\nmin_free_disk_bytes = 0\n'
                f'[[sources]]\nname = "bench"\nwrite_key = "{WRITE_KEY}"\n'
                + (PLAN_SETTINGS + plan_config(Path(tmp)) if server == "cdpd+plan" else "")
                + args.config.replace("\\n", "\n")
            )
            command += ["-m", "cdpd", "serve", "--config", str(config)]
            if server == "cdpd+privacy":
                suppress_users(config, Path(tmp), cwd)
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(cwd)},
        )
        try:
            wait_for_port(port, proc, timeout_s=120)
            asyncio.run(send(port, 200, "warm", args.batch))
            control(proc.pid, "-z")
            asyncio.run(send(port, requests, "counted", args.batch))
            control(proc.pid, "-d")
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        dumps = sorted(glob.glob(f"{out}.*"))
        total = int(re.search(r"^summary: (\d+)", Path(dumps[0]).read_text(), re.M).group(1))  # type: ignore[union-attr]
    per_request = total / requests
    print(f"{server:>5}: {per_request:,.0f} instructions per request", file=sys.stderr)
    return per_request


def control(pid: int, flag: str) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


async def send(port: int, count: int, prefix: str, batch: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/{'track' if batch == 1 else 'batch'}"
    limit = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession() as http:

        async def one(n: int) -> None:
            if batch == 1:
                body = (EVENT % (n % 1000, prefix, n)).encode()
            else:
                items = ",".join(EVENT % (i % 1000, prefix, n * batch + i) for i in range(batch))
                body = f'{{"sentAt":"2026-11-28T10:00:00.500Z","batch":[{items}]}}'.encode()
            async with limit, http.post(url, data=body, headers=AUTH) as resp:
                assert resp.status == 200, resp.status

        await asyncio.gather(*(one(n) for n in range(count)))


if __name__ == "__main__":
    raise SystemExit(main())
