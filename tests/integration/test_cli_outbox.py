"""`cdpd outbox stats` and `cdpd outbox tail` on an outbox a real cdpd wrote."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd.app import Running, running
from cdpd.config import Config
from tests.helpers import WRITE_KEY, basic_auth, outbox_path


async def fill(cdpd: Running, http: aiohttp.ClientSession) -> None:
    batch = [
        {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-1"},
        {"type": "identify", "userId": "u1", "messageId": "m-2"},
        {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "m-3"},
        {"type": "track", "userId": "u1", "messageId": "m-4"},
    ]
    headers = {"Authorization": basic_auth(WRITE_KEY)}
    async with http.post(f"{cdpd.url}/v1/batch", json={"batch": batch}, headers=headers) as resp:
        assert resp.status == 200


async def test_stats(
    cdpd: Running, http: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill(cdpd, http)
    config = str(tmp_path / "cdpd.toml")
    assert await asyncio.to_thread(cli.main, ["outbox", "stats", "--config", config]) == 0
    text = capsys.readouterr().out
    assert "messages  3" in text
    assert "website                  track               1" in text
    assert "missing_event" in text
    assert await asyncio.to_thread(cli.main, ["outbox", "stats", "--json", "--config", config]) == 0
    stats = msgspec.json.decode(capsys.readouterr().out)
    assert stats["messages"] == 3
    assert stats["file_bytes"] > 0
    assert {(c["type"], c["messages"]) for c in stats["by_type"]} == {
        ("identify", 1),
        ("page", 1),
        ("track", 1),
    }


async def test_tail(
    cdpd: Running, http: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill(cdpd, http)
    command = ["outbox", "tail", "-n", "2", "--config", str(tmp_path / "cdpd.toml")]
    assert await asyncio.to_thread(cli.main, command) == 0
    # The in-process daemon logs to the same stdout; the command's lines are the JSON ones.
    out = capsys.readouterr().out.splitlines()
    lines = [msgspec.json.decode(line) for line in out if line.startswith("{")]
    assert [line["message_id"] for line in lines] == ["m-2", "m-3"]
    assert lines[1]["payload"]["name"] == "Home"


def test_no_outbox_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cdpd.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "nothing"}"\n')
    assert cli.main(["outbox", "stats", "--config", str(config)]) == 1
    assert "there is no outbox" in capsys.readouterr().err


async def test_tail_shows_a_stored_message_that_cannot_be_decoded(
    make_config: Callable[..., Config],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(make_config()) as server:
        await fill(server, http)
    # What an older cdpd accepted: a number that no decoder reads back (ingest now rejects it).
    broken = '{"type":"page","anonymousId":"a1","properties":{"n":1e400},"messageId":"m-3"}'
    with sqlite3.connect(outbox_path(data_dir)) as conn:
        conn.execute("UPDATE messages SET payload = ? WHERE message_id = 'm-3'", (broken,))
    command = ["outbox", "tail", "-n", "1", "--config", str(tmp_path / "cdpd.toml")]
    assert await asyncio.to_thread(cli.main, command) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert line.endswith(f',"payload":{broken}}}')
