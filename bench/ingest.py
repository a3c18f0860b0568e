"""Ingest benchmark: cdpd's durable ack against a bare aiohttp server, same client, same run.

Starts each server pinned to core 0 and loads it with wrk (64 connections, 2 threads, on core 1):
single-event `POST /v1/track` and 100-event `POST /v1/batch` with ~800-byte track events, each
with its own messageId. Prints events/s, p50/p99 acknowledgement latency, peak RSS (VmHWM), the
server's CPU time per event (every thread, user and system) and cdpd's throughput and CPU time as
ratios of the bare server's, then checks that cdpd stored every event it acknowledged. Ratios are
the median of each repetition's own ratio (cdpd against the bare run just before it). On a
shared machine the CPU time per event moves much less than the rate does.

    python bench/ingest.py [--duration 10] [--reps 1] [--connections 64] [--baseline DIR]
    python bench/ingest.py --plan   # also cdpd with a 50-event tracking plan, all checks on
    python bench/ingest.py --watch  # also cdpd with a person watching the console's debugger
    python bench/ingest.py --privacy  # privacy off, then on: matchers, 1,000 users suppressed

`--baseline DIR` also measures the cdpd in DIR (e.g. `git worktree add /tmp/main main`), in the
same run and interleaved with the others, so that a change is compared before and after on the
same machine state.

Needs wrk (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRITE_KEY = "wk_bench"
CLIENT_CPU = "1"


@dataclass
class Result:
    server: str
    mode: str
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mb: float
    cpu_us_per_event: float = float("nan")
    stored_ok: str = "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of discarded load first")
    parser.add_argument("--reps", type=int, default=1, help="repetitions, interleaved")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    parser.add_argument("--only", choices=["single", "batch100"], help="run one load only")
    parser.add_argument("--baseline", type=Path, help="a checkout of cdpd to compare against")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="also cdpd with a 50-event tracking plan, all checks on (compare it with cdpd)",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="also cdpd with the source's live debugger open (compare it with cdpd)",
    )
    parser.add_argument(
        "--privacy",
        action="store_true",
        help="cdpd with privacy detection off, then on with the default matchers and a 1,000-user"
        " suppression list (compare them)",
    )
    parser.add_argument(
        "--config",
        default="",
        help='TOML added to cdpd\'s config, e.g. "[logging]\\naccess_log = false"',
    )
    parser.add_argument(
        "--server-cpus", default="0", help="cores the servers may use (taskset list; wrk uses 1)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    runs: dict[tuple[str, str], list[Result]] = {}
    for _ in range(args.reps):
        for mode, batch in (("single", 1), ("batch100", 100)):
            if args.only and mode != args.only:
                continue
            for server in servers(args):
                result = measure(server, mode, batch, args)
                runs.setdefault((server, mode), []).append(result)
    print_table(runs, servers(args))
    if args.privacy:
        print_ratio(runs, "cdpd+privacy", "cdpd")
    return 0


def print_ratio(runs: dict[tuple[str, str], list[Result]], server: str, against: str) -> None:
    """`server`'s events/s over `against`'s, per load: the median of each repetition's ratio."""
    print()
    for mode in ("single", "batch100"):
        if (server, mode) not in runs:
            continue
        pairs = list(zip(runs[(server, mode)], runs[(against, mode)], strict=True))
        by_rate = statistics.median(r.events_per_s / b.events_per_s for r, b in pairs)
        by_cpu = statistics.median(b.cpu_us_per_event / r.cpu_us_per_event for r, b in pairs)
        print(f"{server} / {against}, {mode}: {by_rate:.2f}x by rate, {by_cpu:.2f}x by CPU")


def servers(args: argparse.Namespace) -> tuple[str, ...]:
    names = ("bare", "base", "cdpd") if args.baseline else ("bare", "cdpd")
    if args.plan:
        names += ("cdpd+plan",)
    if args.watch:
        names += ("cdpd+watch",)
    if args.privacy:
        names += ("cdpd+privacy",)
    return names


def measure(server: str, mode: str, batch: int, args: argparse.Namespace) -> Result:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cdpd-bench-") as tmp:
        proc = start_server(server, port, Path(tmp), args)
        try:
            path = "/v1/track" if batch == 1 else "/v1/batch"
            run_wrk(port, path, batch, args.warmup, args.connections)
            before = stored_events(Path(tmp)) if server != "bare" else 0
            cpu_before_s = cpu_s(proc.pid)
            output = run_wrk(port, path, batch, args.duration, args.connections)
            cpu_used_s = cpu_s(proc.pid) - cpu_before_s
            rss_mb = peak_rss_mb(proc.pid)
        finally:
            stop(proc)
        result = parse_wrk(output, server, mode, batch, rss_mb)
        acked_events = acknowledged_requests(output) * batch
        result.cpu_us_per_event = cpu_used_s * 1e6 / max(1, acked_events)
        if server != "bare":
            stored = stored_events(Path(tmp)) - before
            acked = acknowledged_requests(output) * batch
            result.stored_ok = "yes" if stored >= acked else f"NO ({stored} < {acked})"
    if server == "cdpd+watch":
        print(f"  the watcher received {len(WATCHED)} debugger events", file=sys.stderr)
    print(
        f"{server:>5} {mode:<9} {result.events_per_s:>10,.0f} events/s  "
        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  rss {rss_mb:5.1f} MB  "
        f"cpu {result.cpu_us_per_event:6.1f} us/event",
        file=sys.stderr,
    )
    return result


def start_server(
    server: str, port: int, tmp: Path, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    """`bare`, `cdpd` (this checkout) or `base` (the checkout given as --baseline)."""
    cwd = args.baseline if server == "base" else HERE.parent
    if server == "bare":
        command = [sys.executable, str(HERE / "bare_server.py"), "--port", str(port)]
    else:
        config = tmp / "cdpd.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n'
            f'[storage]\ndata_dir = "{tmp / "var"}"\nsynchronous = "{args.synchronous}"\n'
            f"min_free_disk_bytes = 0\n"
            f'[[sources]]\nname = "bench"\nwrite_key = "{WRITE_KEY}"\n'
            + (PLAN_SETTINGS + plan_config(tmp) if server == "cdpd+plan" else "")
            + (WATCHED_WORKSPACE if server == "cdpd+watch" else "")
            + privacy_config(server, args)
            + args.config.replace("\\n", "\n")
        )
        command = [sys.executable, "-m", "cdpd", "serve", "--config", str(config)]
        if server == "cdpd+privacy":
            suppress_users(config, tmp, cwd)
    proc = subprocess.Popen(
        ["taskset", "-c", args.server_cpus, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd)},
    )
    wait_for_port(port, proc)
    if server == "cdpd+watch":
        watch_debugger(port, tmp / "cdpd.toml", cwd)
    return proc


WATCHED_WORKSPACE = '[[workspaces]]\nname = "bench"\nsources = ["bench"]\n'
WATCHER_PASSWORD = "bench-password"  # noqa: S105 (a throwaway person in a temporary dir)


def watch_debugger(port: int, config: Path, cwd: Path) -> None:
    """Add a person, sign in, and read the source's debugger stream on a thread until the
    server stops (the thread ends with the connection)."""
    subprocess.run(
        [sys.executable, "-m", "cdpd", "users", "add", "watcher", "--workspace", "bench",
         "--role", "read-only", "--password-stdin", "--config", str(config)],
        input=WATCHER_PASSWORD.encode(), check=True, cwd=cwd, capture_output=True,
        env={**os.environ, "PYTHONPATH": str(cwd)},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    form = urllib.parse.urlencode({"name": "watcher", "password": WATCHER_PASSWORD}).encode()
    opener.open(f"{base}/console/signin", form, timeout=10).read()
    stream = opener.open(f"{base}/console/w/bench/sources/bench/debugger", timeout=30)
    WATCHED.clear()

    def read() -> None:
        try:
            for line in stream:
                if line.startswith(b"data: "):
                    WATCHED.append(1)
        except OSError:
            pass

    threading.Thread(target=read, daemon=True).start()


WATCHED: list[int] = []  # one entry per debugger event the watcher received
SUPPRESSED_USERS = 1000


def privacy_config(server: str, args: argparse.Namespace) -> str:
    """Under --privacy, `cdpd` runs without detection and `cdpd+privacy` with the default
    matchers (every new field of properties, traits and context matched, the inbox written)."""
    if not args.privacy:
        return ""
    return "[privacy]\ndetect = " + ("true" if server == "cdpd+privacy" else "false") + "\n"


def suppress_users(config: Path, tmp: Path, cwd: Path) -> None:
    """A workspace suppression of 1,000 users that the load does not send as (it sends as
    user-0 ... user-999): every message pays the check, none is dropped."""
    users = tmp / "suppressed.txt"
    users.write_text("".join(f"suppressed-{n}\n" for n in range(SUPPRESSED_USERS)))
    subprocess.run(
        [
            *(sys.executable, "-m", "cdpd", "regulations", "create", "SUPPRESS_ONLY"),
            *("--from-file", str(users), "--config", str(config)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd)},
    )


# Every check on: unplanned events blocked, unplanned properties omitted, violations block.
PLAN_SETTINGS = """tracking_plan = "bench"
[sources.protocols.track]
allowUnplannedEvents = false
allowUnplannedEventProperties = false
allowEventOnViolations = false
allowPropertiesOnViolations = false
commonEventOnViolations = "BLOCK"
"""


def plan_config(tmp: Path) -> str:
    """A 50-event plan in Segment's rule format (post.lua's event is one of them, and meets
    its rule and the common rule), and the config entry naming it."""
    product = {
        "type": "object",
        "properties": {
            "product_id": {"type": "string"},
            "sku": {"type": "string"},
            "name": {"type": "string"},
            "price": {"type": "number"},
            "quantity": {"type": "integer"},
            "category": {"type": "string"},
        },
        "required": ["product_id"],
    }
    properties = {
        "order_id": {"type": "string"},
        "total": {"type": "number"},
        "revenue": {"type": "number"},
        "shipping": {"type": "number"},
        "tax": {"type": "number"},
        "currency": {"type": "string", "enum": ["USD", "EUR", "GBP"]},
        "products": {"type": "array", "items": product},
    }
    events = ["Order Completed"] + [f"Bench Event {n}" for n in range(49)]
    rules: list[dict[str, object]] = [
        {
            "type": "TRACK",
            "key": event,
            "version": 1,
            "jsonSchema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {
                    "properties": {
                        "type": "object",
                        "properties": properties,
                        "required": ["order_id", "total"],
                    }
                },
                "required": ["properties"],
            },
        }
        for event in events
    ]
    rules.append(
        {
            "type": "COMMON",
            "version": 1,
            "jsonSchema": {
                "type": "object",
                "properties": {"context": {"type": "object", "required": ["library"]}},
            },
        }
    )
    path = tmp / "plan.json"
    path.write_text(json.dumps({"rules": rules}))
    return f'[[tracking_plans]]\nname = "bench"\npath = "{path}"\n'


def run_wrk(port: int, path: str, batch: int, duration_s: int, connections: int) -> str:
    env = {**os.environ, "CDPD_PATH": path, "CDPD_BATCH": str(batch)}
    command = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(HERE / "post.lua"),
        f"http://127.0.0.1:{port}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return done.stdout


def parse_wrk(output: str, server: str, mode: str, batch: int, rss_mb: float) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(errors_match.group(1)) if errors_match else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Result(
        server=server,
        mode=mode,
        requests_per_s=rps,
        events_per_s=rps * batch,
        p50_ms=latency_ms(output, "50%"),
        p99_ms=latency_ms(output, "99%"),
        errors=errors,
        rss_mb=rss_mb,
    )


def latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def acknowledged_requests(output: str) -> int:
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return total - (int(errors_match.group(1)) if errors_match else 0)


def stored_events(tmp: Path) -> int:
    with sqlite3.connect(tmp / "var" / "outbox.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def cpu_s(pid: int) -> float:
    """User plus system CPU time of every thread of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    # taskset execs the server, so the pid is the server's own.
    status = Path(f"/proc/{pid}/status").read_text()
    kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return kb / 1024


def print_table(runs: dict[tuple[str, str], list[Result]], names: tuple[str, ...]) -> None:
    print()
    print(
        "| server | load | events/s | req/s | p50 ms | p99 ms | peak RSS MB | errors "
        "| CPU µs/event | /bare by rate | /bare by CPU | all acked stored |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("single", "batch100"):
        if ("bare", mode) not in runs:
            continue
        bare = runs[("bare", mode)]
        for server in names:
            results = runs[(server, mode)]
            by_rate = [r.events_per_s / b.events_per_s for r, b in zip(results, bare, strict=True)]
            by_cpu = [
                b.cpu_us_per_event / r.cpu_us_per_event for r, b in zip(results, bare, strict=True)
            ]
            print(
                f"| {server} | {mode} | {statistics.median(r.events_per_s for r in results):,.0f} "
                f"| {statistics.median(r.requests_per_s for r in results):,.0f} "
                f"| {statistics.median(r.p50_ms for r in results):.2f} "
                f"| {statistics.median(r.p99_ms for r in results):.2f} "
                f"| {max(r.rss_mb for r in results):.0f} "
                f"| {sum(r.errors for r in results)} "
                f"| {statistics.median(r.cpu_us_per_event for r in results):.1f} "
                f"| {statistics.median(by_rate):.2f} "
                f"| {statistics.median(by_cpu):.2f} "
                f"| {', '.join(sorted({r.stored_ok for r in results}))} |"
            )
    for mode in ("single", "batch100"):
        if ("cdpd+privacy", mode) in runs:
            ratios = [
                p.events_per_s / c.events_per_s
                for p, c in zip(runs[("cdpd+privacy", mode)], runs[("cdpd", mode)], strict=True)
            ]
            cpu = [
                c.cpu_us_per_event / p.cpu_us_per_event
                for p, c in zip(runs[("cdpd+privacy", mode)], runs[("cdpd", mode)], strict=True)
            ]
            print(
                f"\ncdpd+privacy / cdpd, {mode}: {statistics.median(ratios):.2f}x by rate,"
                f" {statistics.median(cpu):.2f}x by CPU time per event"
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
