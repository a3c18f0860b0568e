"""Privacy on the JetStream backend: how long a classification takes to be in force on another
node. A three-server cluster on loopback; one connection classifies N fields one after the
other, another follows the inventory as a node does (cdpd/cluster/privacy_stage.py). Prints
the time from the classify call to the other view applying it (p50, p99, max), and with
--stall the time to catch up after its watch was cut off (the 2 s bound of docs/scaling.md).

    .venv/bin/python bench/cluster_privacy.py [--fields 200] [--stall]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdpd.clock import SystemClock  # noqa: E402
from cdpd.cluster import connect  # noqa: E402
from cdpd.cluster.layout import Layout  # noqa: E402
from cdpd.cluster.privacy_stage import InventoryView  # noqa: E402
from cdpd.cluster.privacy_store import ClusterPrivacy  # noqa: E402
from cdpd.config import JetStreamConfig  # noqa: E402
from cdpd.privacy.controls import Inventory  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402

AT = "2026-12-07T00:00:00.000Z"


async def _applied_ms(
    view: InventoryView, field: str, class_: str | None, started_s: float
) -> float:
    while view.inventory.classes.get(field) != class_:  # noqa: ASYNC110 - polled to time it
        await asyncio.sleep(0.0005)
    return (time.perf_counter() - started_s) * 1000


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with jetstream_cluster(Path(tmp) / "js") as cluster:
            config = JetStreamConfig(servers=cluster.urls)
            layout = Layout.of(config)
            async with (
                connect.connected(config, name="classifier") as writing,
                connect.connected(config, name="node") as following,
            ):
                await connect.ensure(writing.jetstream(), config, layout)
                writer = await ClusterPrivacy.of(writing.jetstream(), layout)
                reader = await ClusterPrivacy.of(following.jetstream(), layout)
                view = InventoryView(reader, Inventory(), SystemClock())
                await view.load()
                stop = asyncio.Event()
                task = asyncio.create_task(view.run(stop))
                try:
                    await asyncio.sleep(0.5)
                    took = []
                    for n in range(args.fields):
                        started_s = time.perf_counter()
                        await writer.classify(f"properties.f{n}", "red", AT, "bench")
                        took.append(await _applied_ms(view, f"properties.f{n}", "red", started_s))
                    took.sort()
                    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
                    print(
                        f"classify -> applied on another node, {args.fields} fields:"
                        f"  p50 {took[len(took) // 2]:.1f} ms  p99 {p99:.1f} ms"
                        f"  max {took[-1]:.1f} ms"
                    )
                    if args.stall and view.watcher is not None:
                        await view.watcher._sub.unsubscribe()  # the watch stalls
                        started_s = time.perf_counter()
                        await writer.classify("properties.f0", None, AT, "bench")
                        stalled = await _applied_ms(view, "properties.f0", None, started_s)
                        print(f"after the watch stalled: applied in {stalled:.0f} ms")
                finally:
                    stop.set()
                    task.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=200, help="classifications to time")
    parser.add_argument("--stall", action="store_true", help="also cut the watch off once")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
