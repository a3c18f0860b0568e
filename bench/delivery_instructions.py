"""CPU instructions per delivered message, cdpd against the bare aiohttp client: a noise-free
companion to bench/deliver.py.

Each sender runs under valgrind's callgrind twice, delivering `--messages` and then twice as
many to the same local sink (one message per request, or `--batch` per request); the difference
between the two counts, divided by the difference in messages, is the cost of a message without
start-up and shutdown. cdpd delivers a backlog queued with `cdpd replay`, as bench/deliver.py
does; counts include every thread (cdpd's SQLite threads too). Instructions are not time (cache
misses are not counted), so read the ratio next to bench/deliver.py's.

    python bench/delivery_instructions.py [--messages 1000] [--batch 1] [--baseline DIR]

`--baseline DIR` also counts the cdpd checkout in DIR, for a before/after comparison.
Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from deliver import Sink, SinkProtocol, _config, _ingest
from ingest import HERE, free_port, stop, wait_for_port

CONCURRENCY = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1, help="messages per request")
    parser.add_argument("--baseline", type=Path, help="a checkout of cdpd to count as well")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    senders = {"bare": HERE.parent, "cdpd": HERE.parent}
    if args.baseline:
        senders = {"bare": HERE.parent, "base": args.baseline, "cdpd": HERE.parent}
    counts = {name: asyncio.run(per_message(name, cwd, args)) for name, cwd in senders.items()}
    print(f"| sender | instructions per message ({args.batch}/request) | bare/sender |")
    print("|---|---|---|")
    for name, count in counts.items():
        print(f"| {name} | {count:,.0f} | {counts['bare'] / count:.2f} |")
    return 0


async def per_message(name: str, cwd: Path, args: argparse.Namespace) -> float:
    small = await count(name, cwd, args.messages, args.batch)
    large = await count(name, cwd, 2 * args.messages, args.batch)
    result = (large - small) / args.messages
    print(f"{name:>5}: {result:,.0f} instructions per message", file=sys.stderr)
    return result


async def count(name: str, cwd: Path, messages: int, batch: int) -> int:
    """Instructions of one whole run of `name` sending `messages` to a sink in this process."""
    sink = Sink(expect=messages)
    server = await asyncio.get_running_loop().create_server(
        lambda: SinkProtocol(sink), "127.0.0.1", 0
    )
    sink_port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="cdpd-dinstr-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        env = {**os.environ, "PYTHONPATH": str(cwd)}
        if name == "bare":
            command += [str(HERE / "bare_client.py"), "--port", str(sink_port)]
            command += ["--messages", str(messages), "--concurrency", str(CONCURRENCY)]
            command += ["--batch", str(batch)]
            await asyncio.to_thread(
                subprocess.run, command, stdout=subprocess.DEVNULL, cwd=cwd, env=env, check=True
            )
        else:
            port = free_port()
            plain = _config(Path(tmp), port, destination=None)
            hook = _config(Path(tmp), port, destination=(sink_port, CONCURRENCY, batch))
            await _ingest(plain, port, messages)
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "cdpd", "replay", "--destination", "hook",
                 "--since", "2000-01-01", "--config", str(hook)],
                check=True, capture_output=True, cwd=cwd, env=env,
            )  # fmt: skip
            command += ["-m", "cdpd", "serve", "--config", str(hook)]
            proc = await asyncio.to_thread(
                functools.partial(
                    subprocess.Popen,
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=cwd,
                    env=env,
                )
            )
            await asyncio.to_thread(wait_for_port, port, proc, 180)
            await asyncio.wait_for(sink.complete.wait(), 1800)
            await asyncio.to_thread(stop, proc)
        server.close()
        return await asyncio.to_thread(summary, out)


def summary(out: Path) -> int:
    text = Path(sorted(glob.glob(f"{out}*"))[0]).read_text()
    return int(re.search(r"^summary: (\d+)", text, re.M).group(1))  # type: ignore[union-attr]


if __name__ == "__main__":
    raise SystemExit(main())
