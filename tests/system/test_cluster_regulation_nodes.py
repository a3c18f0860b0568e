"""Two `cdpd serve` nodes on a three-server JetStream cluster: the node working a deletion (the
holder of the regulations lease) is `kill -9`ed while a vendor still refuses it, and the other
node takes the lease once it expires and finishes the regulation, without redoing what was
finished."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.js.errors import KeyNotFoundError

from cdpd.cluster.layout import Layout
from cdpd.cluster.regulations_worker import LEASE_KEY
from tests.cluster_support import jetstream_text, stored_rows
from tests.contracts.amplitude_deletion import AmplitudeDeletionContract
from tests.contracts.base import Scripted
from tests.helpers import WRITE_KEY, Daemon, basic_auth, spawn_cdpd
from tests.integration.test_regulation_forwarding import amplitude
from tests.jetstream_cluster import JetStreamCluster
from tests.regulations import ADMIN, regulate, regulation, settled

pytestmark = pytest.mark.system

GONE, KEPT = "user-gone-7f3a", "user-kept-2b9c"
SLOW_RETRY = "retry = { backoff_min_s = 1.0, backoff_max_s = 1.0 }\n"


async def _holder(urls: list[str]) -> str | None:
    client = await nats.connect(urls)
    try:
        kv = await client.jetstream().key_value(Layout().leases_bucket)
        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get(LEASE_KEY)
            return entry.value.decode() if entry.value else None
        return None
    finally:
        await client.close()


async def _node(tmp_path: Path, cluster: JetStreamCluster, name: str, extra: str) -> Daemon:
    path = tmp_path / f"{name}.toml"
    path.write_text(jetstream_text(tmp_path / name, cluster.urls, ADMIN + extra))
    return await spawn_cdpd(path)


async def test_a_killed_holder_s_deletion_is_finished_by_the_other_node(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with AmplitudeDeletionContract() as amp:
        amp.know(GONE)
        amp.script.extend([Scripted(503, "down"), Scripted(503, "down")])
        extra = amplitude(amp).split("retry = {")[0] + SLOW_RETRY
        first = await _node(tmp_path, js_cluster, "a", extra)
        first_holds = f":{first.proc.pid}"
        async with asyncio.timeout(30):
            while not (await _holder(js_cluster.urls) or "").endswith(first_holds):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        second = await _node(tmp_path, js_cluster, "b", extra)
        try:
            batch = [
                {"type": "track", "event": "Order", "userId": user, "messageId": f"m-{user}"}
                for user in (GONE, KEPT)
            ]
            headers = {"Authorization": basic_auth(WRITE_KEY)}
            async with http.post(f"{second.url}/v1/batch", json={"batch": batch}, headers=headers):
                pass
            regulation_id = await regulate(http, second, "DELETE_ONLY", GONE)
            async with asyncio.timeout(30):
                while True:
                    found = await regulation(http, second, regulation_id)
                    targets = {t["target"]: t for t in found["targets"]}
                    if targets["destination:amp"]["attempts"] >= 1:
                        break
                    await asyncio.sleep(0.05)
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
            found = await settled(http, second, regulation_id, timeout_s=60)
            holder = await _holder(js_cluster.urls)
        finally:
            await first.stop(signal.SIGKILL)
            assert await second.stop() == 0
    assert found["overallStatus"] == "FINISHED", found
    targets = {t["target"]: t for t in found["targets"]}
    assert (targets["outbox"]["attempts"], targets["outbox"]["rowsRemoved"]) == (1, 1)
    assert targets["destination:amp"]["attempts"] == 3
    assert amp.deleted == [GONE]
    assert (holder or "").endswith(f":{second.proc.pid}")
    assert [row.user_id for row in await stored_rows(js_cluster.urls)] == [KEPT]
