"""RudderStack's SDKs, unchanged, pointed at cdpd: their largest batches (4 MiB and one more
message) are accepted whole, and identify traits sent only as `context.traits` are traits."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from rudderstack.analytics import Client

from cdpd.app import Running
from tests.helpers import WRITE_KEY, query, rejects, stored_payloads

# Messages just under the per-message limit (32 KiB), so a batch is cut by its size.
FILLER_CHARS = 30_000
MESSAGES = 300  # ~9 MB: at least two batches of ~4 MiB


def _send_large(client: Client) -> list[str]:
    for n in range(MESSAGES):
        client.track(f"user-{n}", "Big", {"blob": "x" * FILLER_CHARS, "n": n}, message_id=f"r{n}")
    client.identify("user-1", {"email": "u1@example.com", "plan": "pro"}, message_id="id-1")
    client.flush()
    return [f"r{n}" for n in range(MESSAGES)] + ["id-1"]


async def test_rudder_sdk_python_largest_batches_are_accepted(
    cdpd: Running, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[Any] = []
    client = Client(
        WRITE_KEY,
        host=cdpd.url,
        upload_size=1000,  # the batch is cut by its size (4 MiB), not its count
        upload_interval=2,
        max_retries=0,
        on_error=lambda error, batch: errors.append(error),
    )
    with caplog.at_level(logging.DEBUG, logger="rudderstack"):
        sent = await asyncio.to_thread(_send_large, client)
    await asyncio.to_thread(client.join)
    assert errors == []
    sizes = [r.message for r in caplog.records if "hit batch size limit" in r.message]
    assert sizes  # the SDK did fill a batch to its limit
    stored = {m for (m,) in query(data_dir, "SELECT message_id FROM messages")}
    assert stored == set(sent)
    assert rejects(data_dir) == []
    identify = next(p for p in stored_payloads(data_dir) if p["type"] == "identify")
    assert identify["traits"] == {"email": "u1@example.com", "plan": "pro"}
    assert identify["context"]["traits"] == identify["traits"]  # as sent, and as traits


NODE_SCRIPT = """
const sdk = require('@rudderstack/rudder-sdk-node');
const Analytics = sdk.Analytics || sdk.default || sdk;
const client = new Analytics(process.argv[2], {
  dataPlaneUrl: process.argv[3], flushAt: 1000, flushInterval: 60000, maxQueueSize: 4 * 1024 * 1024,
});
const blob = 'x'.repeat(30000);
for (let n = 0; n < 200; n++) {
  client.track({ userId: 'u' + n, event: 'Big', properties: { blob, n }, messageId: 'node' + n });
}
client.identify({ userId: 'u1', context: { traits: { plan: 'team' } }, messageId: 'node-id' });
client.flush((err) => { if (err) { console.error(String(err)); process.exit(1); } });
"""


@pytest.fixture(scope="session")
def rudder_node_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """@rudderstack/rudder-sdk-node from npm, in a scratch folder; skipped without npm."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed for RudderStack's Node SDK")
    folder = tmp_path_factory.mktemp("rudder-node")
    done = subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "@rudderstack/rudder-sdk-node@3"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"npm could not install @rudderstack/rudder-sdk-node: {done.stderr[-300:]}")
    return folder


async def test_rudder_sdk_node_largest_batches_are_accepted(
    cdpd: Running, data_dir: Path, rudder_node_sdk: Path
) -> None:
    script = rudder_node_sdk / "send.js"
    script.write_text(NODE_SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), WRITE_KEY, cdpd.url, cwd=rudder_node_sdk,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    stored = {m for (m,) in query(data_dir, "SELECT message_id FROM messages")}
    assert stored == {f"node{n}" for n in range(200)} | {"node-id"}
    identify = next(p for p in stored_payloads(data_dir) if p["type"] == "identify")
    assert identify["traits"] == {"plan": "team"}
    assert identify["userId"] == "u1"
