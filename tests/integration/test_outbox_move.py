"""`cdpd outbox export` on an outbox a real cdpd wrote (who still owes each message), and
`cdpd outbox import` into a real JetStream cluster: its refusals, a partial run run again, and
a second run that stores nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import pytest

from cdpd import cli
from cdpd.app import running
from cdpd.cluster.layout import LOADED_IN, OWED_TO, Layout
from cdpd.cluster.outbox_import import progress_key
from cdpd.outbox.export import ExportedMessage, ExportHeader
from tests.cluster_support import jetstream_text
from tests.helpers import config_text, query
from tests.integration.test_delivery import MakeConfig, delivered, hook, recorded, send, track
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink, status


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(cli.main, list(args))


def _lines(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header, *messages = (msgspec.json.decode(line) for line in path.read_bytes().splitlines())
    return header, messages


async def test_export_says_who_still_owes_each_message(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path, tmp_path: Path
) -> None:
    config = str(tmp_path / "cdpd.toml")
    out = tmp_path / "export.jsonl"
    async with Sink() as sink:
        async with running(make_config(hook("hook", sink.url))) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(n, properties={"x": "é\u2028"}) for n in range(5)])
            await delivered(lane, 5)
            sink.default = status(500)  # down: what follows waits for a retry
            await send(http, server, [track(n) for n in range(5, 8)])
            await recorded(lane, 8)
            # The daemon runs: the export reads a snapshot beside it.
            assert await run_cli("outbox", "export", "--output", str(out), "--config", config) == 0

        header, messages = _lines(out)
        assert header["format"] == "cdpd-outbox-export"
        assert header["version"] == 1
        assert header["last_seq"] == 8
        assert header["destinations"] == ["hook"]
        assert [m["message_id"] for m in messages] == [f"m{n}" for n in range(8)]
        assert [m["owed_destinations"] for m in messages] == [[]] * 5 + [["hook"]] * 3
        stored = [row[0] for row in query(data_dir, "SELECT payload FROM messages ORDER BY seq")]
        assert [m["payload"] for m in messages] == stored  # byte for byte

        pending = ["outbox", "export", "--pending-only", "--output", str(out), "--config", config]
        assert await run_cli(*pending) == 0
        assert [m["message_id"] for m in _lines(out)[1]] == ["m5", "m6", "m7"]
        # A replay job owes its range again, what was delivered included.
        replay = ["replay", "--destination", "hook", "--since", "1h", "--config", config]
        assert await run_cli(*replay) == 0
        assert await run_cli(*pending) == 0
        owed = {m["message_id"]: m["owed_destinations"] for m in _lines(out)[1]}
        assert owed == {f"m{n}": ["hook"] for n in range(8)}


async def test_export_to_standard_output(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    async with running(make_config()) as server:
        await send(http, server, [track(1)])
    assert await run_cli("outbox", "export", "--config", str(tmp_path / "cdpd.toml")) == 0
    captured = capsysbinary.readouterr()
    header, message = captured.out.splitlines()[-2:]  # after the daemon's log lines
    assert msgspec.json.decode(header)["last_seq"] == 1
    assert msgspec.json.decode(message)["owed_destinations"] == []
    assert b"exported 1 messages up to seq 1" in captured.err


def _export(
    path: Path,
    count: int,
    outbox: str = "/var/lib/cdpd/outbox.sqlite3",
    warehouses: dict[str, int] | None = None,
) -> None:
    header = ExportHeader(
        format="cdpd-outbox-export",
        version=1,
        outbox=outbox,
        last_seq=count,
        exported_at="2026-12-07T00:00:00.000Z",
        pending_only=False,
        destinations=["hook"],
        warehouses=warehouses or {},
    )
    messages = [
        ExportedMessage(
            seq=n + 1,
            message_id=f"m{n}",
            source="website",
            type="track",
            event="Order",
            user_id=f"u{n % 7}",
            anonymous_id=None,
            received_at="2026-12-07T00:00:00.000Z",
            payload=msgspec.json.encode({"type": "track", "messageId": f"m{n}"}).decode(),
            owed_destinations=["hook"] if n % 2 else [],
            owed_warehouses=[],
        )
        for n in range(count)
    ]
    path.write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in [header, *messages]))


def _jetstream_config(
    tmp_path: Path, servers: list[str], extra: str = "", warehouse: str = ""
) -> str:
    path = tmp_path / "js.toml"
    path.write_text(jetstream_text(tmp_path / "js", servers, warehouse, jetstream=extra))
    return str(path)


async def test_import_refuses_what_it_cannot_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export.jsonl"
    _export(export, 3)
    sqlite = tmp_path / "sqlite.toml"
    sqlite.write_text(config_text(tmp_path / "var"))
    assert await run_cli("outbox", "import", "--input", str(export), "--config", str(sqlite)) == 2
    assert 'backend is not "jetstream"' in capsys.readouterr().err

    closed = _jetstream_config(tmp_path, ["nats://127.0.0.1:1"], "connect_timeout_s = 0.5\n")
    not_export = tmp_path / "other.jsonl"
    for text, error in [
        ('{"type": "track"}\n', "line 1: not a cdpd outbox export"),
        ("", "line 1: not a cdpd outbox export"),
        ('{"format": "tar", "version": 1}\n', "line 1: not a cdpd outbox export"),
    ]:
        not_export.write_text(text)
        assert await run_cli("outbox", "import", "--input", str(not_export), "--config", closed)
        assert error in capsys.readouterr().err
    newer = export.read_text().replace('"version":1', '"version":2', 1)
    not_export.write_text(newer)
    assert await run_cli("outbox", "import", "--input", str(not_export), "--config", closed) == 2
    assert "export format version 2; this cdpd reads version 1" in capsys.readouterr().err
    missing = str(tmp_path / "missing.jsonl")
    assert await run_cli("outbox", "import", "--input", missing, "--config", closed) == 2
    assert "No such file" in capsys.readouterr().err

    assert await run_cli("outbox", "import", "--input", str(export), "--config", closed) == 1
    assert "cannot connect to JetStream at nats://127.0.0.1:1" in capsys.readouterr().err


async def _stored(servers: list[str]) -> list[dict[str, str]]:
    client = await nats.connect(servers)
    try:
        js = client.jetstream()
        info = await js.stream_info("CDPD")
        return [
            dict((await js.get_msg("CDPD", seq)).headers or {})
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
            if info.state.messages
        ]
    finally:
        await client.close()


async def _forget_progress(servers: list[str], outbox: str) -> None:
    client = await nats.connect(servers)
    try:
        kv = await client.jetstream().key_value(Layout().positions_bucket)
        await kv.delete(progress_key(outbox))
    finally:
        await client.close()


async def test_a_stopped_import_continues_and_nothing_is_stored_twice(
    tmp_path: Path, js_cluster: JetStreamCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _jetstream_config(tmp_path, js_cluster.urls)
    export = tmp_path / "export.jsonl"
    _export(export, 1200)
    good = export.read_bytes()
    lines = good.splitlines(keepends=True)
    export.write_bytes(b"".join([*lines[:701], b'{"seq": "x"}\n', *lines[702:]]))
    command = ["outbox", "import", "--input", str(export), "--config", config]

    assert await run_cli(*command) == 2
    assert "line 702: Expected `int`, got `str` - at `$.seq`" in capsys.readouterr().err
    assert len(await _stored(js_cluster.urls)) == 500  # the first batch went in

    export.write_bytes(good)
    assert await run_cli(*command) == 0
    out = capsys.readouterr().out
    assert (
        "1200 messages: 700 stored, 0 already in the stream, 500 imported by an earlier run" in out
    )
    headers = await _stored(js_cluster.urls)
    assert [h["Cdpd-Message-Id"] for h in headers] == [f"m{n}" for n in range(1200)]
    assert headers[0][OWED_TO] == "[]"
    assert headers[1][OWED_TO] == '["hook"]'
    assert LOADED_IN not in headers[1]

    await _forget_progress(js_cluster.urls, "/var/lib/cdpd/outbox.sqlite3")
    assert await run_cli(*command) == 0  # the dedup ids alone keep it out
    assert "0 stored, 1200 already in the stream" in capsys.readouterr().out
    assert len(await _stored(js_cluster.urls)) == 1200

    # Another outbox's export with a warehouse whose position would be set to the start.
    warehouse = f'[[warehouses]]\nname = "wh"\ntype = "sqlite"\npath = "{tmp_path / "wh.db"}"\n'
    config = _jetstream_config(tmp_path, js_cluster.urls, warehouse=warehouse)
    _export(export, 3, outbox="/srv/other.sqlite3", warehouses={"wh": 2})
    assert await run_cli("outbox", "import", "--input", str(export), "--config", config) == 2
    assert "the stream CDPD already holds messages (last seq 1200)" in capsys.readouterr().err


async def test_warehouse_rewind_on_the_jetstream_backend(
    tmp_path: Path, js_cluster: JetStreamCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    warehouse = f'[[warehouses]]\nname = "wh"\ntype = "sqlite"\npath = "{tmp_path / "wh.db"}"\n'
    config = _jetstream_config(tmp_path, js_cluster.urls, warehouse=warehouse)
    export = tmp_path / "export.jsonl"
    _export(export, 4, warehouses={"wh": 2})
    assert await run_cli("outbox", "import", "--input", str(export), "--config", config) == 0
    assert "positions set to the stream's start: wh" in capsys.readouterr().out
    rewind = ["warehouse", "rewind", "wh", "--config", config]

    assert await run_cli(*rewind) == 2  # no outbox recorded a position to go back to
    assert "--to is needed on the JetStream backend" in capsys.readouterr().err
    assert await run_cli(*rewind, "--to", "5") == 2
    assert "--to must be from 0 to the last seq (4), not 5" in capsys.readouterr().err
    assert await run_cli(*rewind, "--to", "1") == 2
    assert "wh is at seq 0; rewinding only moves back" in capsys.readouterr().err
    assert await run_cli(*rewind, "--to", "0") == 0
    assert "wh: position 0 -> 0; its next sync loads the messages after seq 0" in (
        capsys.readouterr().out
    )

    closed = _jetstream_config(
        tmp_path, ["nats://127.0.0.1:1"], "connect_timeout_s = 0.5\n", warehouse=warehouse
    )
    closed_rewind = ["warehouse", "rewind", "wh", "--to", "0", "--config", closed]
    assert await run_cli(*closed_rewind) == 1
    assert "cannot connect to JetStream at nats://127.0.0.1:1" in capsys.readouterr().err
