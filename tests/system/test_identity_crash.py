"""`kill -9` while the identity stage resolves a backlog, then a restart: every stored message is
resolved exactly once, and the store ends exactly as resolving the outbox in one pass would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd.config import parse
from cdpd.identity import store
from cdpd.identity.graph import Graph
from cdpd.identity.identifiers import Rules
from cdpd.identity.stage import resolve_messages
from cdpd.outbox.consumers import Message
from tests.helpers import WRITE_KEY, basic_auth, config_file, spawn_cdpd
from tests.system.test_file_crash import poll
from tests.unit.test_identity_properties import dump

pytestmark = pytest.mark.system

USERS = 400
MESSAGES = 12_000
PER_REQUEST = 400
IDENTITY = '[identity]\nspace = "s"\naccess_tokens = ["t"]\nbatch_messages = 20\n'


def journey(n: int) -> dict[str, object]:
    user = n % USERS
    step = n // USERS
    message: dict[str, object] = {"messageId": f"m{n}", "anonymousId": f"a{user}-{step % 3}"}
    if step % 4 == 1:
        message |= {"type": "identify", "userId": f"u{user}", "traits": {"step": step}}
    else:
        message |= {"type": "track", "event": "Viewed"}
    return message


def identity_position(data_dir: Path) -> int:
    try:
        with sqlite3.connect(data_dir / "identity.sqlite3") as conn:
            return int(conn.execute("SELECT seq FROM position").fetchone()[0])
    except sqlite3.Error:
        return 0


async def post_all(url: str) -> None:
    headers = {"Authorization": basic_auth(WRITE_KEY)}
    async with aiohttp.ClientSession() as http:
        for start in range(0, MESSAGES, PER_REQUEST):
            batch = [journey(n) for n in range(start, start + PER_REQUEST)]
            async with http.post(
                f"{url}/v1/batch", data=msgspec.json.encode({"batch": batch}), headers=headers
            ) as resp:
                assert resp.status == 200


def resolve_in_one_pass(data_dir: Path, path: Path) -> None:
    with sqlite3.connect(data_dir / "outbox.sqlite3") as conn:
        rows = conn.execute(
            "SELECT seq, message_id, source, type, event, user_id, anonymous_id, received_at,"
            " payload FROM messages ORDER BY seq"
        ).fetchall()
    messages = [Message(*row) for row in rows]
    rules = Rules(parse(IDENTITY).identity)
    graph = Graph()
    with store.connect(path) as conn:
        resolutions = resolve_messages(graph, rules, messages)
        store.save_batch(conn, graph, resolutions, messages[-1].seq)


async def test_kill_9_during_resolution_resolves_everything_once(
    tmp_path: Path, data_dir: Path
) -> None:
    # The backlog is stored before the identity stage starts, so that it is killed in the
    # middle of resolving it however fast the machine resolves compared with ingest.
    before = await spawn_cdpd(config_file(tmp_path, data_dir))
    await post_all(before.url)
    assert await before.stop() == 0
    config = config_file(tmp_path, data_dir, IDENTITY)
    daemon = await spawn_cdpd(config)
    await poll(lambda: identity_position(data_dir) >= 1000)
    daemon.proc.kill()
    assert await daemon.proc.wait() == -9
    with sqlite3.connect(data_dir / "outbox.sqlite3") as conn:
        stored = conn.execute("SELECT max(seq) FROM messages").fetchone()[0]
    assert stored == MESSAGES
    assert 1000 <= identity_position(data_dir) < stored  # killed in the middle

    again = await spawn_cdpd(config)
    await poll(lambda: identity_position(data_dir) >= stored)
    assert await again.stop() == 0

    with sqlite3.connect(data_dir / "identity.sqlite3") as conn:
        seqs = [row[0] for row in conn.execute("SELECT seq FROM resolutions ORDER BY seq")]
    assert seqs == list(range(1, stored + 1))  # none skipped
    reference = tmp_path / "reference.sqlite3"
    resolve_in_one_pass(data_dir, reference)
    assert dump(data_dir / "identity.sqlite3") == dump(reference)  # none resolved twice
