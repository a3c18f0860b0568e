"""`cdpd outbox stats` and `cdpd outbox tail` on an outbox a real cdpd wrote."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd.app import Running, running
from cdpd.config import Config
from tests.helpers import PROJECT_ROOT, WRITE_KEY, basic_auth, outbox_path


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


async def test_tail_filters(
    cdpd: Running, http: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill(cdpd, http)
    config = str(tmp_path / "cdpd.toml")

    async def tail(*options: str) -> list[str]:
        args = ["outbox", "tail", "--config", config, *options]
        assert await asyncio.to_thread(cli.main, args) == 0
        out = capsys.readouterr().out.splitlines()  # the in-process daemon logs there too
        return [msgspec.json.decode(line)["message_id"] for line in out if line.startswith("{")]

    assert await tail("--type", "track") == ["m-1"]
    assert await tail("--user", "a1") == ["m-3"]
    assert await tail("--user", "u1", "-n", "1") == ["m-2"]
    assert await tail("--event", "Signed Up", "--source", "website") == ["m-1"]
    assert await tail("--source", "backend") == []


async def test_tail_follow_prints_new_messages_as_they_are_stored(
    cdpd: Running, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await fill(cdpd, http)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cdpd", "outbox", "tail", "-f", "-n", "1", "--type", "track",
        "--config", str(tmp_path / "cdpd.toml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = msgspec.json.decode(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["message_id"] == "m-1"
        batch = [
            {"type": "page", "userId": "u2", "name": "Skipped", "messageId": "m-5"},
            {"type": "track", "userId": "u2", "event": "Later", "messageId": "m-6"},
        ]
        headers = {"Authorization": basic_auth(WRITE_KEY)}
        async with http.post(f"{cdpd.url}/v1/batch", json={"batch": batch}, headers=headers) as r:
            assert r.status == 200
        later = msgspec.json.decode(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert later["message_id"] == "m-6"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert err == b""  # Ctrl-C ends it quietly


async def test_rejects_lists_and_counts(
    cdpd: Running, http: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill(cdpd, http)  # m-4 is a track without an event: rejected
    capsys.readouterr()  # the in-process daemon's log lines
    config = str(tmp_path / "cdpd.toml")
    assert await asyncio.to_thread(cli.main, ["rejects", "--config", config]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert "website" in line
    assert "missing_event" in line
    assert "m-4" in line
    args = ["rejects", "--json", "--reason", "missing_event", "--config", config]
    assert await asyncio.to_thread(cli.main, args) == 0
    (found,) = [msgspec.json.decode(x) for x in capsys.readouterr().out.splitlines()]
    assert (found["message_id"], found["source"]) == ("m-4", "website")
    assert (
        await asyncio.to_thread(cli.main, ["rejects", "--counts", "--json", "--config", config])
        == 0
    )
    counts = [msgspec.json.decode(x) for x in capsys.readouterr().out.splitlines()]
    assert counts == [{"source": "website", "reason_code": "missing_event", "rejects": 1}]
