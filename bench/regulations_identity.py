"""Deletion with identity on: how long a SUPPRESS_WITH_DELETE of --delete users takes, target by
target (the outbox, the identity store, a SQLite warehouse with Profiles Sync tables), after
--users users' journeys (anonymous page, sign-up identify with an email, a track) were ingested,
resolved and synced.

    .venv/bin/python bench/regulations_identity.py [--users 10000] [--delete 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.model.timestamps import parse_ms

ADMIN = {"Authorization": "Bearer bench-admin"}
WRITE = {"Authorization": "Basic " + base64.b64encode(b"wk_bench:").decode()}
BATCH = 500


def config_text(data_dir: Path) -> str:
    return (
        f'[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "{data_dir}"\n'
        'min_free_disk_bytes = 0\n[[sources]]\nname = "web"\nwrite_key = "wk_bench"\n'
        '[admin]\ntoken = "bench-admin"\n'
        '[identity]\nspace = "bench"\naccess_tokens = ["t"]\n'
        f'[[warehouses]]\nname = "wh"\ntype = "sqlite"\npath = "{data_dir}/wh.sqlite3"\n'
        "interval_s = 3600\n"
    )


def journey(n: int) -> list[dict[str, Any]]:
    user, anon = f"user-{n}", f"anon-{n}"
    return [
        {"type": "page", "anonymousId": anon, "name": "Pricing"},
        {
            "type": "identify",
            "anonymousId": anon,
            "userId": user,
            "traits": {"email": f"{user}@example.com", "plan": "pro"},
        },
        {"type": "track", "userId": user, "event": "Order Completed", "properties": {"n": n}},
    ]


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cdpd.toml"
        path.write_text(config_text(Path(tmp) / "var"))
        async with running(cdpd_config.load(path)) as server, aiohttp.ClientSession() as http:
            messages = [m for n in range(args.users) for m in journey(n)]
            for start in range(0, len(messages), BATCH):
                body = {"batch": messages[start : start + BATCH]}
                async with http.post(f"{server.url}/v1/batch", json=body, headers=WRITE) as r:
                    assert r.status == 200, await r.text()
            assert server.identity is not None
            await server.identity.wait_resolved(server.writer.last_seq)
            report = await server.warehouses.sync_now("wh")
            assert report.status == "success", report.error
            users = [f"user-{n}" for n in range(0, args.users, args.users // args.delete)]
            body = {
                "regulationType": "SUPPRESS_WITH_DELETE",
                "subjectType": "USER_ID",
                "subjectIds": users[: args.delete],
            }
            started = time.perf_counter()
            async with http.post(f"{server.url}/regulations", json=body, headers=ADMIN) as r:
                regulation_id = (await r.json())["data"]["regulateId"]
            while True:
                async with http.get(
                    f"{server.url}/regulations/{regulation_id}", headers=ADMIN
                ) as r:
                    found = (await r.json())["data"]["regulation"]
                if found["overallStatus"] not in ("INITIALIZED", "RUNNING"):
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
    print(f"users ingested {args.users}, deleted {args.delete}: {found['overallStatus']}")
    print(f"regulation created to finished: {elapsed:.2f} s")
    previous = parse_ms(found["createdAt"])
    for target in found["targets"]:
        done = parse_ms(target["finishedAt"])
        print(
            f"  {target['target']:<14} {target['rowsRemoved']:>7} rows"
            f"  finished {(done - previous) / 1000:.2f} s after the previous step"
        )
        previous = done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--delete", type=int, default=1_000)
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
