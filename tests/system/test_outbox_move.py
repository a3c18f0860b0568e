"""The move from the SQLite backend to JetStream with a backlog: a webhook that is down and a
warehouse loaded part way. `cdpd outbox export` reads the SQLite outbox while its daemon runs,
the daemon stops, `cdpd outbox import` publishes into a three-server JetStream cluster (twice:
the second run stores nothing), a JetStream node starts; the webhook then has every message
exactly once (none it had before the move again) and so has the PostgreSQL warehouse."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from segment.analytics import Client

from tests.cluster_support import jetstream_text, loaded_ids, stored_rows
from tests.helpers import PROJECT_ROOT, WRITE_KEY, WarehouseProbe, config_text, spawn_cdpd
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink, status

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]  # five processes, one by one

DELIVERED_BEFORE = 120  # delivered and loaded on the SQLite backend
BACKLOG = 180  # accepted while the webhook was down, loaded by no one yet
AFTER = 30  # sent to the JetStream node
LOADED_AT = """SELECT id, loaded_at FROM "website"."tracks" WHERE id LIKE 'before-%'"""


def _send(url: str, prefix: str, count: int) -> None:
    """The official client, batching as it does by default; flush waits for every batch."""
    client = Client(WRITE_KEY, host=url, max_retries=3, upload_size=50)
    for n in range(count):
        client.track(
            user_id=f"u{n % 17}", event="Order", message_id=f"{prefix}-{n}", properties={"n": n}
        )
    client.flush()
    client.shutdown()


async def _cdpd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cdpd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_backlog_moves_to_jetstream_and_each_consumer_gets_what_it_was_owed_once(
    tmp_path: Path, js_cluster: JetStreamCluster, postgres_test_dsn: str
) -> None:
    warehouse = WarehouseProbe(
        kind="postgres",
        toml=f'[[warehouses]]\nname = "wh"\ntype = "postgres"\ndsn = "{postgres_test_dsn}"\n',
        dsn=postgres_test_dsn,
    )
    await warehouse.empty()
    async with Sink() as sink:
        hook = f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{sink.url}"\n'
        sqlite_config = tmp_path / "sqlite.toml"
        sqlite_config.write_text(
            config_text(tmp_path / "sqlite", hook + warehouse.toml + "interval_s = 3600\n")
        )
        daemon = await spawn_cdpd(sqlite_config)
        await asyncio.to_thread(_send, daemon.url, "before", DELIVERED_BEFORE)
        await sink.wait_for_delivered(DELIVERED_BEFORE, timeout_s=60)
        code, out, err = await _cdpd("warehouse", "sync", "wh", "--config", str(sqlite_config))
        assert code == 0, err
        loaded_before = await warehouse.fetch(LOADED_AT)
        assert len(loaded_before) == DELIVERED_BEFORE
        sink.default = status(500)  # the webhook goes down: a backlog builds
        await asyncio.to_thread(_send, daemon.url, "backlog", BACKLOG)
        await sink.wait_for_requests(sink.arrived + 1, timeout_s=30)
        export = tmp_path / "export.jsonl"
        code, _, err = await _cdpd(
            "outbox", "export", "--output", str(export),
            "--config", str(sqlite_config),
        )  # fmt: skip
        assert code == 0, err
        assert await daemon.stop() == 0

        lines = export.read_bytes().splitlines()
        header = msgspec.json.decode(lines[0])
        assert header["warehouses"] == {"wh": DELIVERED_BEFORE}
        owed = {
            m["message_id"]: (m["owed_destinations"], m["owed_warehouses"])
            for m in map(msgspec.json.decode, lines[1:])
        }
        assert len(owed) == DELIVERED_BEFORE + BACKLOG
        assert all(owed[f"before-{n}"] == ([], []) for n in range(DELIVERED_BEFORE))
        assert all(owed[f"backlog-{n}"] == (["hook"], ["wh"]) for n in range(BACKLOG))

        sink.default = status(200)  # back up for the new backend
        js_config = tmp_path / "jetstream.toml"
        js_config.write_text(
            jetstream_text(
                tmp_path / "js", js_cluster.urls, hook + warehouse.toml + "interval_s = 0.2\n"
            )
        )
        for run in range(2):
            code, out, err = await _cdpd(
                "outbox", "import", "--input", str(export), "--config", str(js_config)
            )
            assert code == 0, err
            stored = DELIVERED_BEFORE + BACKLOG if run == 0 else 0
            assert f"{stored} stored" in out, out
        assert len(await stored_rows(js_cluster.urls)) == DELIVERED_BEFORE + BACKLOG

        node = await spawn_cdpd(js_config)
        await asyncio.to_thread(_send, node.url, "after", AFTER)
        everything = {
            *(f"before-{n}" for n in range(DELIVERED_BEFORE)),
            *(f"backlog-{n}" for n in range(BACKLOG)),
            *(f"after-{n}" for n in range(AFTER)),
        }
        await sink.wait_for(lambda s: set(s.message_ids) >= everything, timeout_s=90)
        loaded = await loaded_ids(warehouse, everything)
        assert await node.stop() == 0
    delivered = Counter(sink.message_ids)
    assert set(delivered) == everything
    assert max(delivered.values()) == 1, delivered.most_common(3)
    assert Counter(loaded) == Counter(everything)
    # Rows are merged by id, so a second load would not add rows: it would write them again.
    assert set(loaded_before) <= set(await warehouse.fetch(LOADED_AT))
