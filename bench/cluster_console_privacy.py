"""The console's Privacy page on a JetStream node: how long a page takes when the inbox holds
`--fields` fields (a tenth of them classified). A three-server cluster on loopback, the
buckets filled through the cluster's privacy store, one real node with the console; a person
signed in times the page (first page, a search, the last page) and a classify button over
`--requests` requests each, and the two buckets' listing alone. Prints p50, p95 and max
milliseconds. The client runs in the node's process.

    .venv/bin/python bench/cluster_console_privacy.py [--fields 2000] [--requests 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdpd.cluster.node import running_node  # noqa: E402
from cdpd.cluster.privacy_store import ClusterPrivacy  # noqa: E402
from cdpd.privacy.store import InboxField  # noqa: E402
from tests.cluster_support import jetstream_config, jetstream_text  # noqa: E402
from tests.console_support import add_cluster_person, signed_in, workspaces_toml  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402

AT = "2026-12-07T00:00:00.000Z"


def _inbox_rows(fields: int) -> list[InboxField]:
    return [
        InboxField("website", f"properties.f{n}", "yellow" if n % 3 else None, None, None, AT,
                   AT, "x")
        for n in range(fields)
    ]  # fmt: skip


async def _timed_ms(step: Awaitable[None]) -> float:
    began = time.perf_counter()
    await step
    return (time.perf_counter() - began) * 1000


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with jetstream_cluster(root / "js") as cluster:
            text = jetstream_text(root / "a", cluster.urls, workspaces_toml("http://127.0.0.1:9"))
            config = jetstream_config(root / "a.toml", text)
            async with running_node(config, node_name="a") as node:
                privacy = await ClusterPrivacy.of(node.client.jetstream(), node.layout)
                started = time.perf_counter()
                assert await privacy.fold_inbox(_inbox_rows(args.fields)) == []
                for n in range(0, args.fields, 10):
                    await privacy.classify(f"properties.f{n}", "yellow", AT, "bench")
                print(
                    f"{args.fields} fields written in {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                )
                await add_cluster_person(config, "bench", {"acme": "owner"})
                async with signed_in(node.url, "bench") as (client, csrf):
                    await _time_pages(client, csrf, privacy, args)


async def _time_pages(
    client: aiohttp.ClientSession, csrf: str, privacy: ClusterPrivacy, args: argparse.Namespace
) -> None:
    last = (args.fields - args.fields // 10 + 49) // 50
    pages = {
        "page 1": "/console/w/acme/privacy",
        "search f19": "/console/w/acme/privacy?q=f19",
        f"inbox page {last}": f"/console/w/acme/privacy?inbox={last}",
    }

    async def get(path: str) -> None:
        async with client.get(path) as resp:
            assert resp.status == 200, resp.status
            await resp.read()

    async def classify() -> None:
        form = {"csrf": csrf, "field": "properties.f1", "class": "red"}
        async with client.post("/console/w/acme/privacy/classify", data=form) as resp:
            assert resp.status == 200, resp.status  # the redirect, followed: the page again
            await resp.read()

    async def listing() -> None:
        await asyncio.gather(privacy.inbox(include_classified=True), privacy.inventory())

    print(f"| Privacy page, {args.fields} fields | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    steps = {"the listing alone (no HTTP, no render)": listing}
    steps |= {name: (lambda p=path: get(p)) for name, path in pages.items()}
    steps["classify (and the page it redirects to)"] = classify
    for name, step in steps.items():
        took = sorted([await _timed_ms(step()) for _ in range(args.requests + 1)][1:])
        p95 = took[min(len(took) - 1, int(0.95 * len(took)))]
        print(f"| {name} | {statistics.median(took):.1f} | {p95:.1f} | {took[-1]:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per step")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
