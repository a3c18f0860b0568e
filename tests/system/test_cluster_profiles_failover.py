"""Two `cdpd serve` nodes on a three-server JetStream cluster run identity resolution and Engage
under the profiles lease: the official Python client sends through both while the lease holder
is `kill -9`ed. The other node takes the lease over within seconds, restores the last
snapshot and goes on; in the end its profiles are exactly what resolving the stream's messages
in order gives (as the SQLite backend does), and every audience entry is in the stream once
and reached the webhook sink once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

import msgspec
import nats
import pytest
from segment.analytics import Client

from cdpd import config as cdpd_config
from cdpd.cluster.layout import Layout
from cdpd.cluster.ordered import message_of
from cdpd.cluster.profiles import LEASE_KEY
from cdpd.identity import store
from cdpd.identity.graph import Graph
from cdpd.identity.identifiers import Rules
from cdpd.identity.stage import resolve_messages
from tests.cluster_support import (
    Sender,
    acked_at_least,
    jetstream_text,
    lease_holder,
    profiles_toml,
    stored_messages,
)
from tests.helpers import Daemon, spawn_cdpd
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink

pytestmark = pytest.mark.system

ACKED_BEFORE_KILL = 300
ACKED_AFTER_KILL = 500
USERS = 20


AUDIENCES = {"regulars": "event('Order').count() >= 5", "loyal": "event('Order').count() >= 25"}


def _call(client: Client, message_id: str, n: int) -> None:
    """Orders by 20 users; anonymous page views that an Identify then ties to a user, with
    traits (merges), and later to another user (merges refused)."""
    if n % 10 == 0:
        client.identify(
            user_id=f"u{(n // 10) % USERS}",
            anonymous_id=f"anon-{(n // 10) % 30}",
            traits={"plan": f"p{n % 3}", "n": n},
            message_id=message_id,
        )
    elif n % 10 == 5:
        client.track(
            anonymous_id=f"anon-{(n // 10 + 1) % 30}", event="Viewed", message_id=message_id
        )
    else:
        client.track(
            user_id=f"u{n % USERS}", event="Order", properties={"n": n}, message_id=message_id
        )


async def _identity_position(urls: list[str]) -> tuple[int, int]:
    """(the identity stage's mirrored position, the stream's last sequence)."""
    client = await nats.connect(urls)
    try:
        js = client.jetstream()
        kv = await js.key_value(Layout().positions_bucket)
        try:
            position = int((await kv.get("identity")).value or b"0")
        except Exception:  # not written yet
            position = 0
        return position, (await js.stream_info(Layout().stream)).state.last_seq
    finally:
        await client.close()


async def _caught_up(urls: list[str]) -> None:
    """Until the identity stage has resolved the whole stream, Engage's last messages too."""
    steady = 0
    for _ in range(600):
        position, last_seq = await _identity_position(urls)
        steady = steady + 1 if position == last_seq else 0
        if steady >= 8:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"identity stopped at {position} of {last_seq}")


async def _new_holder(urls: list[str], old: str) -> str:
    for _ in range(600):
        holder = await lease_holder(urls, LEASE_KEY)
        if holder != old:
            return holder
        await asyncio.sleep(0.05)
    raise AssertionError("the profiles lease never moved")


def _stored_graph(path: Path) -> Graph:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return store.load_graph(conn)


async def test_profiles_fail_over_to_the_same_state_and_send_each_entry_once(
    tmp_path: Path, js_cluster: JetStreamCluster
) -> None:
    async with Sink() as sink:
        nodes: list[Daemon] = []
        for name in ("a", "b"):
            path = tmp_path / f"{name}.toml"
            path.write_text(
                jetstream_text(
                    tmp_path / name,
                    js_cluster.urls,
                    profiles_toml(sink.url, AUDIENCES),
                    jetstream="ack_timeout_s = 2.0\nsnapshot_interval_s = 1.0\n",
                )
            )
            nodes.append(await spawn_cdpd(path))
        config = cdpd_config.load(tmp_path / "a.toml")
        senders = [
            Sender("a", [nodes[0].url, nodes[1].url], _call),
            Sender("b", [nodes[1].url, nodes[0].url], _call),
        ]
        threads = [asyncio.create_task(asyncio.to_thread(s.run)) for s in senders]
        try:
            holder = await lease_holder(js_cluster.urls, LEASE_KEY)
            await acked_at_least(ACKED_BEFORE_KILL, senders)
            leader = next(n for n in nodes if holder.endswith(f":{n.proc.pid}"))
            leader.proc.kill()
            killed_at = time.monotonic()
            await leader.proc.wait()
            await _new_holder(js_cluster.urls, holder)
            failover_s = time.monotonic() - killed_at
            await acked_at_least(ACKED_BEFORE_KILL + ACKED_AFTER_KILL, senders)
        finally:
            for sender in senders:
                sender.stop.set()
            await asyncio.gather(*threads)
        assert failover_s < 10, failover_s  # the lease expires 5 s after the last renewal
        await _caught_up(js_cluster.urls)
        survivor = next(n for n in nodes if n is not leader)
        assert await survivor.stop() == 0
        restored = [line for line in survivor.log_lines if line["event"] == "profiles_restored"]
        assert restored[-1]["position"] > 0  # it went on from the dead holder's last snapshot
        messages = await stored_messages(js_cluster.urls)
        engage_ids = {r.message_id for _, r in messages if r.source == "engage_main"}
        await sink.wait_for(lambda s: engage_ids <= set(s.message_ids), timeout_s=30)

    # The survivor's profiles are what resolving the stream in order gives.
    assert config.identity is not None
    expected = Graph()
    resolve_messages(expected, Rules(config.identity), [message_of(s, r) for s, r in messages])
    survivor_dir = tmp_path / ("b" if leader is nodes[0] else "a")
    stored = _stored_graph(survivor_dir / "identity.sqlite3")
    assert stored.profiles == expected.profiles
    assert sum(1 for p in expected.profiles.values() if p.merges) > 0  # merges happened

    # Every user entered each audience once: once in the stream, once at the sink.
    entered = [
        msgspec.json.decode(r.payload)
        for _, r in messages
        if r.source == "engage_main" and r.event == "Audience Entered"
    ]
    keys = Counter((m["userId"], m["properties"]["audience_key"]) for m in entered)
    assert set(keys.values()) == {1}
    orders = Counter(r.user_id for _, r in messages if r.event == "Order")
    assert set(keys) == {(u, "regulars") for u, count in orders.items() if count >= 5} | {
        (u, "loyal") for u, count in orders.items() if count >= 25
    }
    assert len(keys) > USERS
    received = Counter(m["messageId"] for m in sink.messages if "personas" in m["context"])
    assert {m["messageId"] for m in entered} <= set(received)
    assert set(received.values()) == {1}, [k for k, v in received.items() if v > 1][:5]
