"""Regulations with identity resolution on: a deleted user's profile goes from the identity
store and from every warehouse's Profiles Sync tables (SQLite and PostgreSQL), messages still
unresolved do not bring it back, a suppressed user gets no profile, and `cdpd regulations
verify` searches the identity and Engage stores too."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.engage import catalog
from cdpd.engage.catalog import Source
from cdpd.engage.inputs import ProfileMessage
from cdpd.engage.store import EngageStore
from cdpd.identity.profiles_sync import SCHEMA
from cdpd.model.timestamps import format_ms, now_ms
from tests.helpers import WRITE_KEY, WarehouseProbe, basic_auth, outbox_path, query
from tests.integration.test_profile_api import IDENTITY, resolved
from tests.regulations import ADMIN, outbox_mentions, regulate, settled, warehouse_mentions

MakeConfig = Callable[..., cdpd_config.Config]
GONE = "user-gone-5e1d"
KEPT = "user-kept-8c0a"


def journey(user: str, tag: str) -> list[dict[str, Any]]:
    """Anonymous browsing, the sign-up that merges in a second device, then an order."""
    anon, phone = anon_ids(user, tag)
    device = anon.rsplit("-", 1)[-1]  # message ids do not hold the user id either
    return [
        {"type": "page", "anonymousId": anon, "name": "Pricing", "messageId": f"{tag}-p-{device}"},
        {"type": "screen", "anonymousId": phone, "name": "Home", "messageId": f"{tag}-s-{device}"},
        {
            "type": "identify",
            "anonymousId": anon,
            "userId": user,
            "traits": {"email": f"{user}@example.com", "plan": "pro", "referrer": user},
            "messageId": f"{tag}-i-{device}",
        },
        {
            "type": "identify",
            "anonymousId": phone,
            "userId": user,
            "messageId": f"{tag}-m-{device}",
        },
        {
            "type": "track",
            "userId": user,
            "event": "Order Completed",
            "messageId": f"{tag}-t-{device}",
        },
    ]


def anon_ids(user: str, tag: str) -> tuple[str, str]:
    """The devices' anonymous ids (not holding the user id: they outlive a deletion)."""
    device = user.rsplit("-", 1)[-1]
    return f"anon-{tag}-{device}", f"phone-{tag}-{device}"


async def post(
    http: aiohttp.ClientSession, server: Running, messages: list[dict[str, Any]]
) -> None:
    """Ingest without waiting for identity resolution."""
    headers = {"Authorization": basic_auth(WRITE_KEY)}
    async with http.post(
        f"{server.url}/v1/batch", json={"batch": messages}, headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()


def identity_mentions(data_dir: Path, *texts: str) -> dict[str, int]:
    """Rows of each identity store table holding one of `texts` anywhere in a column."""
    found: dict[str, int] = {}
    with sqlite3.connect(data_dir / "identity.sqlite3") as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
            )
        ]
        for table in tables:
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
            for text in texts:
                condition = " OR ".join(f'instr(CAST("{c}" AS TEXT), ?) > 0' for c in columns)
                ((count,),) = conn.execute(
                    f'SELECT count(*) FROM "{table}" WHERE {condition}', [text] * len(columns)
                )
                if count:
                    found[table] = found.get(table, 0) + count
    return found


def owner(server: Running, user: str) -> str | None:
    assert server.identity is not None
    return server.identity.graph.owner("users", ("user_id", user))


async def test_suppress_with_delete_forgets_the_profile_everywhere(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    tmp_path: Path,
    warehouse: WarehouseProbe,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(ADMIN + IDENTITY + warehouse.toml)
    async with running(config) as server:
        await post(http, server, journey(GONE, "a") + journey(KEPT, "a"))
        await resolved(server)
        pid = owner(server, GONE)
        assert server.identity is not None
        assert pid is not None
        members = [
            p for p in server.identity.graph.profiles if server.identity.graph.canonical(p) == pid
        ]
        assert len(members) == 2  # the phone's profile was merged in
        report = await server.warehouses.sync_now("wh")
        assert report.status == "success", report.error
        assert {f"{SCHEMA}.user_identifiers", f"{SCHEMA}__user_identifiers"} & set(
            await warehouse_mentions(warehouse, GONE)
        )

        regulation_id = await regulate(http, server, "SUPPRESS_WITH_DELETE", GONE)
        found = await settled(http, server, regulation_id)
        await post(http, server, journey(GONE, "b"))  # suppressed: no profile comes back
        await resolved(server)
        again = await server.warehouses.sync_now("wh")
        assert again.status == "success", again.error
        assert owner(server, GONE) is None
        assert owner(server, KEPT) is not None

    assert found["overallStatus"] == "FINISHED", found
    targets = {t["target"]: t for t in found["targets"]}
    assert set(targets) == {"outbox", "identity", "warehouse:wh"}
    assert all(t["status"] == "FINISHED" for t in targets.values()), targets
    assert targets["identity"]["rowsRemoved"] >= 8  # 2 profiles, 5 identifiers, traits...
    assert [t["target"] for t in found["targets"]][:2] == ["outbox", "identity"]

    for gone in (GONE, *members, f"{GONE}@example.com", *anon_ids(GONE, "a")):
        assert identity_mentions(data_dir, gone) == {}, gone
    # The profile ids: no Profiles Sync row, and no event's segment_id, leads back.
    for gone in (GONE, *members):
        assert await warehouse_mentions(warehouse, gone) == {}, gone
    for gone in (f"{GONE}@example.com", *anon_ids(GONE, "a")):
        assert not any(SCHEMA in t for t in await warehouse_mentions(warehouse, gone)), gone
    assert outbox_mentions(data_dir, GONE) == {}
    kept = await warehouse_mentions(warehouse, KEPT)
    assert any(SCHEMA in table for table in kept), kept
    assert identity_mentions(data_dir, KEPT)

    config_path = str(tmp_path / "cdpd.toml")
    capsys.readouterr()
    verify = ["regulations", "verify", regulation_id, "--config", config_path]
    assert await asyncio.to_thread(cli.main, verify) == 0
    # the outbox, the identity store, the warehouse (no engage.sqlite3 here)
    assert "(3 stores searched)" in capsys.readouterr().out
    show = ["regulations", "show", regulation_id, "--config", config_path]
    assert await asyncio.to_thread(cli.main, show) == 0
    assert "identity" in capsys.readouterr().out


def checkpointed(path: Path) -> tuple[bytes, bytes]:
    """The bytes of a SQLite file and of its WAL once the WAL is checkpointed (TRUNCATE: what
    the WAL held is in the file, and the WAL is empty until the next write)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        ((busy, _, _),) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert busy == 0
    wal = Path(f"{path}-wal")
    return path.read_bytes(), wal.read_bytes() if wal.exists() else b""


async def test_a_deleted_user_s_bytes_are_gone_from_the_identity_and_outbox_files(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    """SQLite leaves deleted rows' bytes in the file until their space is reused; the
    identity store and the outbox zero them (secure_delete), so once the WAL is checkpointed
    neither file holds the user's identifiers."""
    async with running(make_config(ADMIN + IDENTITY)) as server:
        await post(http, server, journey(GONE, "f") + journey(KEPT, "f"))
        await resolved(server)
        regulation_id = await regulate(http, server, "DELETE_INTERNAL", GONE)
        found = await settled(http, server, regulation_id)
        assert found["overallStatus"] == "FINISHED", found
        identity = await asyncio.to_thread(checkpointed, data_dir / "identity.sqlite3")
    outbox = checkpointed(outbox_path(data_dir))  # the daemon's readers are gone: a whole one
    # The outbox keeps the user id in the regulation's own record (the API shows it), so
    # there the user's messages are looked for by their email.
    wanted_gone = {"identity": (GONE, f"{GONE}@example.com"), "outbox": (f"{GONE}@example.com",)}
    for name, (stored, stored_wal) in {"identity": identity, "outbox": outbox}.items():
        assert stored.find(KEPT.encode()) >= 0, name  # what is kept is found where it is
        for gone in wanted_gone[name]:
            # find(): a failure shows no whole file
            assert stored.find(gone.encode()) == -1, (name, gone)
            assert stored_wal.find(gone.encode()) == -1, (name, gone)


async def test_unresolved_messages_do_not_bring_the_profile_back(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    """DELETE_INTERNAL (no suppression to hide the race): the user's messages are stored and
    read by identity, held back from resolving, while the regulation deletes them."""
    async with running(make_config(ADMIN + IDENTITY)) as server:
        identity = server.identity
        assert identity is not None
        await post(http, server, journey(KEPT, "k"))
        await resolved(server)
        for round_ in range(3):
            async with identity.lock:  # the batch is read, then waits for the lock
                await post(http, server, journey(GONE, f"r{round_}"))
                regulation_id = await regulate(http, server, "DELETE_INTERNAL", GONE)
                await asyncio.sleep(0.05 * round_)
            found = await settled(http, server, regulation_id)
            assert found["overallStatus"] == "FINISHED", found
            await resolved(server)
            assert owner(server, GONE) is None
            # Anonymous messages (no userId) stay, as in Segment: their profile, if one
            # remains, holds none of the user's identifiers.
            assert identity_mentions(data_dir, GONE, f"{GONE}@example.com") == {}

        # Racing without holding anything back: sends and the deletion interleave freely.
        sends = [post(http, server, journey(GONE, f"x{n}")) for n in range(20)]
        await asyncio.gather(*sends)
        regulation_id = await regulate(http, server, "DELETE_INTERNAL", GONE)
        found = await settled(http, server, regulation_id)
        await resolved(server)
        assert found["overallStatus"] == "FINISHED", found
        assert owner(server, GONE) is None
        assert owner(server, KEPT) is not None
    assert identity_mentions(data_dir, GONE, f"{GONE}@example.com") == {}


async def test_a_batch_read_before_the_deletion_is_not_resolved_after_it(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    """The narrowest window: identity has read the user's messages, the regulation deletes
    them and forgets the (not yet existing) profile, then the batch is resolved. The read is
    made late on purpose; it is the real read."""
    async with running(make_config(ADMIN + IDENTITY)) as server:
        identity = server.identity
        assert identity is not None
        read = identity.consumer.read
        gate, reading = asyncio.Event(), asyncio.Event()

        async def late_read(limit: int) -> Any:
            batch = await read(limit)
            if batch:
                reading.set()
                await gate.wait()
            return batch

        identity.consumer.read = late_read  # type: ignore[method-assign]
        await post(http, server, journey(GONE, "late"))
        await asyncio.wait_for(reading.wait(), 10)
        regulation_id = await regulate(http, server, "DELETE_INTERNAL", GONE)
        found = await settled(http, server, regulation_id)
        gate.set()
        await resolved(server)
        assert found["overallStatus"] == "FINISHED", found
        assert owner(server, GONE) is None
    assert identity_mentions(data_dir, GONE, f"{GONE}@example.com") == {}


async def test_a_suppressed_user_gets_no_profile(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with running(make_config(ADMIN + IDENTITY)) as server:
        identity = server.identity
        assert identity is not None
        async with identity.lock:  # stored before the suppression, resolved after it
            await post(http, server, journey(GONE, "before"))
            await regulate(http, server, "SUPPRESS_ONLY", GONE)
        await post(http, server, journey(GONE, "after"))  # not stored at all
        await post(
            http,
            server,
            [
                *journey(KEPT, "k"),
                {"type": "group", "userId": KEPT, "groupId": GONE, "messageId": "g-1"},
                {
                    "type": "identify",
                    "userId": KEPT,
                    "context": {"externalIds": [{"id": GONE, "type": "user_id"}]},
                    "messageId": "x-1",
                },
                {"type": "alias", "userId": KEPT, "previousId": GONE, "messageId": "al-1"},
            ],
        )
        await resolved(server)
        assert owner(server, GONE) is None
        assert identity.graph.owner("accounts", ("group_id", GONE)) is None
        assert owner(server, KEPT) is not None
    assert identity_mentions(data_dir, GONE) == {}
    assert identity_mentions(data_dir, KEPT)


async def test_a_deletion_clears_the_inbox_samples_that_show_the_user(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    """Samples are masked, but an id of punctuation survives masking: the deletion clears
    every sample that is the id's masked form or holds the id (written or not yet)."""
    bare, short = "--__--", "u-7"  # masked: "--__--" (unchanged), "*-*"
    async with running(make_config(ADMIN)) as server:
        await post(
            http,
            server,
            [
                {"type": "track", "event": "E", "userId": bare, "properties": {"ref": bare}},
                {"type": "track", "event": "E", "userId": KEPT, "properties": {"kept": KEPT}},
            ],
        )
        async with asyncio.timeout(20):  # the inbox is written by a periodic flush
            # A poll: the flush signals nothing a test could wait on.
            while not outbox_mentions(data_dir, bare).get("privacy_inbox"):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await post(
            http,
            server,
            [{"type": "identify", "userId": short, "traits": {"nickname": short}}],
        )
        regulation_id = await regulate(http, server, "DELETE_INTERNAL", bare, short)
        found = await settled(http, server, regulation_id)
        assert found["overallStatus"] == "FINISHED", found
    samples = dict(query(data_dir, "SELECT field, sample FROM privacy_inbox"))
    assert samples["properties.ref"] is None
    assert "traits.nickname" in samples
    assert samples["traits.nickname"] is None
    assert samples["properties.kept"] not in (None, KEPT)  # masked, and kept
    assert outbox_mentions(data_dir, bare) == {}


async def test_verify_searches_the_identity_and_engage_stores(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A suppression alone deletes nothing: verify finds the profile in identity.sqlite3 and
    the user's messages in engage.sqlite3 (Engage's store, written here directly)."""
    async with running(make_config(ADMIN + IDENTITY)) as server:
        await post(http, server, journey(GONE, "v"))
        await resolved(server)
        regulation_id = await regulate(http, server, "SUPPRESS_ONLY", GONE)
    engage = await EngageStore.open(data_dir / "engage.sqlite3")
    try:
        sources = [Source(key="buyers", kind="audience", query="event('E').count() >= 1")]
        await engage.register(sources, now_ms())
        engage.use(catalog.build(sources))
        message = {"type": "track", "event": "E", "userId": GONE, "timestamp": format_ms(now_ms())}
        await engage.process([ProfileMessage("p-gone", message)], now_ms())
    finally:
        await engage.close()
    capsys.readouterr()
    verify = ["regulations", "verify", regulation_id, "--config", str(tmp_path / "cdpd.toml")]
    assert await asyncio.to_thread(cli.main, verify) == 1
    held = capsys.readouterr().out
    assert re.search(r"^identity external_ids: 1 rows$", held, re.MULTILINE), held
    assert re.search(r"^engage \w+: \d+ rows$", held, re.MULTILINE), held


async def test_a_regulation_taken_up_at_start_forgets_the_stored_profile(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Created while the daemon is down: at start the regulation's identity step waits for
    the graph to be loaded from the store instead of finding nothing in an empty one."""
    config = make_config(ADMIN + IDENTITY)
    async with running(config) as server:
        await post(http, server, journey(GONE, "s") + journey(KEPT, "s"))
        await resolved(server)
    config_path = str(tmp_path / "cdpd.toml")
    capsys.readouterr()
    create = ["regulations", "create", "DELETE_INTERNAL", GONE, "--config", config_path]
    assert await asyncio.to_thread(cli.main, create) == 0
    regulation_id = re.findall("[0-9a-f]{24}", capsys.readouterr().out)[-1]
    async with running(config) as server:
        found = await settled(http, server, regulation_id)
        assert owner(server, GONE) is None
        assert owner(server, KEPT) is not None
    assert found["overallStatus"] == "FINISHED", found
    (identity,) = [t for t in found["targets"] if t["target"] == "identity"]
    assert identity["rowsRemoved"] > 0
    assert identity_mentions(data_dir, GONE, f"{GONE}@example.com") == {}
