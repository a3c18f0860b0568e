"""`kill -9` while clients are posting: every acknowledged message is in the outbox."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import aiohttp
import msgspec
import pytest

from tests.helpers import WRITE_KEY, basic_auth, config_text, query, spawn_cdpd

pytestmark = pytest.mark.system

AUTH = {"Authorization": basic_auth(WRITE_KEY)}
SENDERS = 16
KILL_AFTER_ACKED = 4000


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_kill_9_loses_no_acknowledged_message(
    tmp_path: Path, data_dir: Path, synchronous: str
) -> None:
    config = tmp_path / "cdpd.toml"
    config.write_text(
        config_text(data_dir).replace(
            "min_free_disk_bytes = 0\n", f'min_free_disk_bytes = 0\nsynchronous = "{synchronous}"\n'
        )
    )
    daemon = await spawn_cdpd(config)
    acked: set[str] = set()
    enough = asyncio.Event()
    ids = itertools.count()

    async def send(http: aiohttp.ClientSession) -> None:
        for n in itertools.count():
            batch_size = 25 if n % 4 == 0 else 1
            message_ids = [f"crash-{next(ids)}" for _ in range(batch_size)]
            items = [
                {"type": "track", "userId": "u", "event": "Crash Test", "messageId": m}
                for m in message_ids
            ]
            body = msgspec.json.encode({"batch": items})
            try:
                async with http.post(f"{daemon.url}/v1/batch", data=body, headers=AUTH) as resp:
                    if resp.status != 200:
                        continue
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                return  # the daemon is gone
            acked.update(message_ids)
            if len(acked) >= KILL_AFTER_ACKED:
                enough.set()

    async with aiohttp.ClientSession() as http:
        senders = [asyncio.create_task(send(http)) for _ in range(SENDERS)]
        await asyncio.wait_for(enough.wait(), 60)
        daemon.proc.kill()
        assert await daemon.proc.wait() == -9
        await asyncio.wait_for(asyncio.gather(*senders), 30)

    stored = {row[0] for row in query(data_dir, "SELECT message_id FROM messages")}
    assert acked <= stored, f"{len(acked - stored)} acknowledged messages were lost"

    # The daemon starts again on the same outbox and goes on accepting.
    again = await spawn_cdpd(config)
    async with aiohttp.ClientSession() as http:
        body = {"userId": "u", "event": "After Restart", "messageId": "after-restart"}
        async with http.post(f"{again.url}/v1/track", json=body, headers=AUTH) as resp:
            assert resp.status == 200
    assert await again.stop() == 0
    assert query(data_dir, "SELECT count(*) FROM messages WHERE message_id = 'after-restart'") == [
        (1,)
    ]
