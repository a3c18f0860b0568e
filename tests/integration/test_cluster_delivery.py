"""Delivery on the JetStream backend, on a real three-server cluster, with two delivery nodes
(each its own connection, as two cdpd processes have) sending to real local sinks."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.clock import SystemClock
from cdpd.cluster import connect, dead
from cdpd.cluster.delivery import ClusterDelivery, delivery_store
from cdpd.cluster.layout import Layout, headers_of
from cdpd.cluster.ledger import Ledger, LedgerRow
from cdpd.cluster.node import running_node
from cdpd.cluster.shared import read_circuit
from cdpd.config import Config
from cdpd.model.timestamps import format_ms, now_ms
from tests.cluster_support import assert_one_limit, jetstream_config, jetstream_text, outbox_row
from tests.helpers import WRITE_KEY, basic_auth
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Answer, Sink, status


def make_config(cluster: JetStreamCluster, destinations: str, extra: str = "") -> Config:
    return cdpd_config.parse(config_toml(cluster, destinations, extra))


def config_toml(cluster: JetStreamCluster, destinations: str, extra: str = "") -> str:
    servers = ", ".join(f'"{url}"' for url in cluster.urls)
    return (
        '[storage]\nbackend = "jetstream"\n'
        f"[storage.jetstream]\nservers = [{servers}]\nack_wait_s = 2\n"
        '[[sources]]\nname = "website"\nwrite_key = "wk"\n'
        f"{extra}{destinations}"
    )


def hook(name: str, url: str, **options: Any) -> str:
    lines = [f'[[destinations]]\nname = "{name}"\ntype = "webhook"\nurl = "{url}"', "timeout_s = 1"]
    lines += [f"{key} = {msgspec.json.encode(value).decode()}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


FAST_RETRY = (
    "[delivery.retry]\nretry_window_s = 3600\nmin_attempts = 3\n"
    "backoff_min_s = 0.2\nbackoff_max_s = 0.5\n"
)


@asynccontextmanager
async def node(config: Config, name: str) -> AsyncIterator[ClusterDelivery]:
    """One node's delivery, on a connection of its own, running until the block ends."""
    async with (
        connect.connected(config.storage.jetstream, name=name) as client,
        aiohttp.ClientSession() as session,
    ):
        js = client.jetstream()
        await connect.ensure(js, config.storage.jetstream, Layout.of(config.storage.jetstream))
        delivery = ClusterDelivery(config, js, session, SystemClock(), node=name)
        await delivery.start()
        stop = asyncio.Event()
        task = asyncio.create_task(delivery.run(stop))
        try:
            yield delivery
        finally:
            stop.set()
            await task


@asynccontextmanager
async def publisher(config: Config) -> AsyncIterator[Any]:
    jetstream = config.storage.jetstream
    layout = Layout.of(jetstream)
    async with connect.connected(jetstream, name="test-ingest") as client:
        js = client.jetstream()
        await connect.ensure(js, jetstream, layout)

        async def publish(*messages: dict[str, Any]) -> None:
            for m in messages:
                row = outbox_row(m)
                await js.publish(
                    layout.subject_for(row),
                    row.payload.encode(),
                    headers=headers_of(row, by_source=True),
                )

        publish.js = js  # type: ignore[attr-defined]
        publish.layout = layout  # type: ignore[attr-defined]
        yield publish


async def until(check: Callable[[], Awaitable[object]], timeout_s: float = 60) -> None:
    """Until `check()` gives something true (polled: the cluster has no event for it)."""
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


def track(n: int, user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "E", "userId": user, "messageId": f"m{n}", **extra}


async def consumer_settled(js: Any, layout: Layout, destination: str) -> None:
    """Until the destination's consumer has nothing pending or unacknowledged."""

    async def settled() -> bool:
        info = await js.consumer_info(layout.stream, layout.delivery_consumer(destination))
        return info.num_pending == 0 and info.num_ack_pending == 0

    await until(settled)


async def test_two_nodes_share_the_work_and_each_message_goes_once(
    js_cluster: JetStreamCluster,
) -> None:
    async with Sink() as sink:
        config = make_config(js_cluster, hook("hook", sink.url, batch_size=10, events=["E"]))
        async with node(config, "a") as a, node(config, "b") as b, publisher(config) as publish:
            await publish(*[track(n, user=f"u{n % 7}") for n in range(300)])
            await publish(track(1000, event="Other"))  # filtered out: acked, never sent
            await sink.wait_for_delivered(300, timeout_s=20)
            await consumer_settled(publish.js, publish.layout, "hook")
            assert sorted(sink.message_ids) == sorted(f"m{n}" for n in range(300))
            assert a.lanes["hook"].stats.delivered + b.lanes["hook"].stats.delivered == 300
            assert a.lanes["hook"].stats.delivered > 0
            assert b.lanes["hook"].stats.delivered > 0


async def test_a_retryable_failure_comes_back_and_a_permanent_one_is_dead(
    js_cluster: JetStreamCluster,
) -> None:
    async with Sink() as sink, Sink() as other:
        sink.by_message["m1"] = _answers(status(503), status(500))
        sink.by_message["m2"] = _answers(status(400, body="bad"))
        config = make_config(
            js_cluster, hook("hook", sink.url) + hook("other", other.url), FAST_RETRY
        )
        async with node(config, "a") as a, publisher(config) as publish:
            await publish(track(1), track(2), track(3))
            await sink.wait_for(lambda s: {"m1", "m3"} <= set(s.message_ids), timeout_s=60)
            await other.wait_for_delivered(3)
            await consumer_settled(publish.js, publish.layout, "hook")
            letters = await dead.dead_letters(publish.js, publish.layout, "hook", 10)
            assert [d.message_id for _, d, _, _ in letters] == ["m2"]
            death = letters[0][1]
            assert (death.attempts, death.last_status) == (1, 400)
            assert "bad" in (death.last_error or "") or "400" in (death.last_error or "")
            assert a.lanes["hook"].stats.retried == 2
            assert await dead.counts(publish.js, publish.layout) == {"hook": 1}

            # Replay: the dead letter goes back to `hook` alone.
            assert await dead.replay(publish.js, publish.layout, "hook", 10) == 1
            await sink.wait_for(lambda s: "m2" in s.message_ids, timeout_s=60)
            await consumer_settled(publish.js, publish.layout, "other")
            await consumer_settled(publish.js, publish.layout, "hook")
            assert sorted(other.message_ids) == ["m1", "m2", "m3"]
            assert sink.message_ids.count("m2") == 1
            assert await dead.counts(publish.js, publish.layout) == {}


async def test_a_message_is_given_up_after_its_retry_window(js_cluster: JetStreamCluster) -> None:
    retry = (
        "[delivery.retry]\nretry_window_s = 0.5\nmin_attempts = 2\n"
        "backoff_min_s = 0.2\nbackoff_max_s = 0.3\n"
    )
    async with Sink(default=status(502)) as sink:
        config = make_config(js_cluster, hook("hook", sink.url), retry)
        async with node(config, "a"), publisher(config) as publish:
            await publish(track(1))
            await until(lambda: dead.dead_letters(publish.js, publish.layout, "hook", 1))
            ((_, death, _, _),) = await dead.dead_letters(publish.js, publish.layout, "hook", 1)
            assert death.attempts >= 2
            assert death.last_status == 502
            assert "gave up" in (death.last_error or "")


async def test_a_user_s_messages_arrive_in_order_across_nodes_and_failures(
    js_cluster: JetStreamCluster,
) -> None:
    async with Sink() as sink:
        sink.by_message["m3"] = _answers(status(503), status(503))
        config = make_config(
            js_cluster, hook("hook", sink.url, ordering="user", batch_size=5), FAST_RETRY
        )
        async with node(config, "a"), node(config, "b"), publisher(config) as publish:
            await publish(*[track(n, user=f"u{n % 3}") for n in range(60)])
            await sink.wait_for(lambda s: len(set(s.message_ids)) >= 60, timeout_s=30)
        for user in ("u0", "u1", "u2"):
            seen = [int(m["messageId"][1:]) for m in sink.messages if m["userId"] == user]
            assert seen == sorted(seen), (user, seen)
        assert len(sink.message_ids) == 60  # nothing sent twice


async def test_one_node_opening_the_circuit_pauses_the_others(
    js_cluster: JetStreamCluster,
) -> None:
    async with Sink(default=status(503)) as sink:
        config = make_config(js_cluster, hook("hook", sink.url, concurrency=1), FAST_RETRY)
        async with node(config, "a"), publisher(config) as publish:
            await publish(*[track(n) for n in range(10)])
            kv = await publish.js.key_value(publish.layout.circuits_bucket)

            async def is_open() -> bool:
                return (await read_circuit(kv, "hook")).state == "open"

            await until(is_open)
            async with node(config, "b") as b:
                lane = b.lanes["hook"]
                await lane.shared.refresh()
                assert lane.shared.circuit.state in ("open", "probing")
                # While open, only probes reach the destination: one at a time across nodes.
                before = sink.arrived
                await asyncio.sleep(2.5)
                assert sink.arrived - before <= 4
            sink.default = status(200)
            await sink.wait_for(lambda s: len(set(s.message_ids)) == 10, timeout_s=20)
            assert (
                await read_circuit(
                    await publish.js.key_value(publish.layout.circuits_bucket), "hook"
                )
            ).state == "closed"


async def test_a_global_rate_limit_holds_across_two_nodes(js_cluster: JetStreamCluster) -> None:
    arrivals: list[float] = []

    async def counted(request: web.Request, body: bytes) -> web.StreamResponse:
        arrivals.append(time.time())
        return await status(200)(request, body)

    async with Sink(default=counted) as sink:
        config = make_config(js_cluster, hook("hook", sink.url, rate_limit_per_s=5))
        async with node(config, "a") as a, node(config, "b") as b, publisher(config) as publish:
            await publish(*[track(n, user=f"u{n}") for n in range(25)])
            await sink.wait_for_delivered(25, timeout_s=30)
        assert_one_limit(arrivals, per_s=5)
        assert a.lanes["hook"].stats.attempts > 0
        assert b.lanes["hook"].stats.attempts > 0


async def test_a_node_killed_mid_batch_leaves_its_messages_to_another(
    js_cluster: JetStreamCluster, tmp_path: Path
) -> None:
    """Only what the dead node had in flight is sent twice; nothing is lost."""
    held = asyncio.Event()

    async def stuck(request: web.Request, body: bytes) -> web.StreamResponse:
        await held.wait()
        return await status(200)(request, body)

    async with Sink() as sink, Sink(default=stuck) as stuck_sink:
        config = make_config(js_cluster, hook("hook", sink.url, batch_size=10, concurrency=2))
        dying = tmp_path / "dying.toml"
        dying.write_text(
            config_toml(js_cluster, hook("hook", stuck_sink.url, batch_size=10, concurrency=2))
        )
        async with publisher(config) as publish:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.cluster_delivery_node", str(dying), "dying",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                assert process.stdout is not None
                assert await asyncio.wait_for(process.stdout.readline(), 20) == b"ready\n"
                await publish(*[track(n) for n in range(50)])
                await stuck_sink.wait_for_requests(2, timeout_s=60)
            finally:
                process.kill()  # kill -9: nothing it holds is acked
                await process.wait()
            async with node(config, "survivor") as survivor:
                await sink.wait_for_delivered(50, timeout_s=20)
                await consumer_settled(publish.js, publish.layout, "hook")
            held.set()
        assert sorted(sink.message_ids) == sorted(f"m{n}" for n in range(50))
        # The killed node had sent two batches of 10 (held unanswered by its sink) and no more.
        assert stuck_sink.arrived == 2
        assert survivor.lanes["hook"].stats.delivered == 50


def _answers(*answers: Answer) -> Any:
    from collections import deque

    return deque(answers)


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(cli.main, list(args))


async def test_the_cli_reports_lists_and_replays_from_the_cluster(
    js_cluster: JetStreamCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Sink() as sink:
        sink.by_message["m2"] = _answers(status(400))
        text = config_toml(js_cluster, hook("hook", sink.url))
        path = tmp_path / "cdpd.toml"
        path.write_text(text)
        config = cdpd_config.parse(text)
        async with node(config, "a"), publisher(config) as publish:
            await publish(track(1), track(2), track(3))
            await sink.wait_for_delivered(2)
            await consumer_settled(publish.js, publish.layout, "hook")
            capsys.readouterr()

            assert await run_cli("deliveries", "stats", "--json", "--config", str(path)) == 0
            (stats,) = msgspec.json.decode(capsys.readouterr().out)
            assert (stats["destination"], stats["dead"], stats["pending"]) == ("hook", 1, 0)
            assert stats["circuit"] == "closed"

            assert await run_cli("deliveries", "dead", "--json", "--config", str(path)) == 0
            (letter,) = [msgspec.json.decode(line) for line in capsys.readouterr().out.splitlines()]
            assert (letter["message_id"], letter["last_status"]) == ("m2", 400)

            assert (
                await run_cli("replay", "--destination", "hook", "--dead", "--config", str(path))
                == 0
            )
            assert "1 dead delivery queued for hook" in capsys.readouterr().out
            await sink.wait_for(lambda s: "m2" in s.message_ids)

            assert (
                await run_cli("deliveries", "retry", "--destination", "hook", "--config", str(path))
                == 0
            )
            assert "circuit of hook closed" in capsys.readouterr().out

            # m2 was given up, replayed and delivered: its ledger row has both attempts.
            async def shown_delivered() -> bool:
                capsys.readouterr()
                code = await run_cli("deliveries", "show", "m2", "--json", "--config", str(path))
                out = capsys.readouterr().out
                return code == 0 and '"state":"delivered"' in out and (shown.append(out) or True)

            shown: list[str] = []
            await until(shown_delivered)
            found = msgspec.json.decode(shown[-1])
            assert (found["destination"], found["attempts"]) == ("hook", 2)
            assert [a["status"] for a in found["history"]] == [400, 200]


async def test_a_ledger_change_read_before_an_outcome_does_not_overwrite_it(
    js_cluster: JetStreamCluster,
) -> None:
    """`cdpd deliveries retry` (or a replay, or a lane giving up) reads a row, the node holding
    the message settles it, then the change is written: it must not put the row back."""
    config = make_config(js_cluster, hook("hook", "http://127.0.0.1:9/"))
    async with node(config, "a"), publisher(config) as publish:
        bucket = publish.layout.ledger_bucket
        ledger = Ledger(publish.js, bucket, await publish.js.key_value(bucket))
        at = format_ms(now_ms())
        waiting = LedgerRow(
            destination="hook", seq=7, message_id="m7", order_key=None, state="retrying",
            attempts=1, created_at=at, next_attempt_at="2100-01-01T00:00:00.000Z",
        )  # fmt: skip
        await ledger.put(waiting)
        ((read, revision),) = await ledger.listed("hook")
        await ledger.put(msgspec.structs.replace(waiting, state="delivered", attempts=2))

        def due_now(row: LedgerRow) -> bool:
            if row.state not in ("pending", "retrying"):
                return False
            row.next_attempt_at = at
            return True

        assert await ledger.change(read, revision, due_now) is False
        settled = await ledger.get("hook", 7)
        assert settled is not None
        assert (settled.state, settled.attempts) == ("delivered", 2)

        await ledger.put(waiting)
        ((read, revision),) = await ledger.listed("hook")
        assert await ledger.change(read, revision, due_now) is True
        changed = await ledger.get("hook", 7)
        assert changed is not None
        assert (changed.state, changed.next_attempt_at) == ("retrying", at)


async def test_two_nodes_serve_the_delivery_admin_api_and_metrics(
    js_cluster: JetStreamCluster, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Real nodes (ingest and delivery): what one node accepted, either node reports."""
    async with Sink() as sink:
        sink.by_message["m2"] = _answers(status(400))
        extra = '[admin]\ntoken = "secret-token"\n' + hook("hook", sink.url)
        configs = [
            jetstream_config(
                tmp_path / f"{name}.toml",
                jetstream_text(
                    tmp_path / name, js_cluster.urls, extra, jetstream="ack_wait_s = 2\n"
                ),
            )
            for name in ("a", "b")
        ]
        auth = {"Authorization": "Bearer secret-token"}
        async with running_node(configs[0]) as a, running_node(configs[1]) as b:
            batch = {"batch": [track(n) for n in range(1, 6)]}
            headers = {"Authorization": basic_auth(WRITE_KEY)}
            async with http.post(f"{a.url}/v1/batch", json=batch, headers=headers) as response:
                assert response.status == 200
            await sink.wait_for_delivered(4)
            layout = Layout.of(configs[0].storage.jetstream)
            await consumer_settled(a.client.jetstream(), layout, "hook")

            async with http.get(f"{b.url}/admin/deliveries") as response:
                assert response.status == 401
            async with http.get(f"{b.url}/admin/deliveries", headers=auth) as response:
                (entry,) = (await response.json())["destinations"]
            assert (entry["destination"], entry["dead"], entry["pending"]) == ("hook", 1, 0)
            async with http.get(f"{b.url}/admin/deliveries/dead", headers=auth) as response:
                (letter,) = (await response.json())["dead"]
            assert letter["message_id"] == "m2"
            async with http.get(f"{b.url}/metrics") as response:
                text = await response.text()
            assert 'cdpd_deliveries{destination="hook",state="dead"} 1.0' in text
            assert 'cdpd_delivery_circuit_open{destination="hook"} 0.0' in text
            replay = {"destination": "hook", "dead": True}
            async with http.post(f"{b.url}/admin/replay", json=replay, headers=auth) as response:
                assert await response.json() == {"destination": "hook", "queued": 1}
            await sink.wait_for(lambda s: "m2" in s.message_ids)

            # Found by its dedup marker: delivered on the first attempt, or after a replay.
            async def shown_delivered(node_url: str, message_id: str, attempts: int) -> bool:
                url = f"{node_url}/admin/deliveries/messages/{message_id}"
                async with http.get(url, headers=auth) as response:
                    (found,) = (await response.json())["deliveries"]
                return bool(found["state"] == "delivered" and found["attempts"] == attempts)

            await until(lambda: shown_delivered(b.url, "m1", 1))
            await until(lambda: shown_delivered(a.url, "m2", 2))
            async with http.get(f"{b.url}/admin/deliveries/messages/m9", headers=auth) as response:
                assert response.status == 404
            retry = {"destination": "nope"}
            async with http.post(
                f"{b.url}/admin/deliveries/retry", json=retry, headers=auth
            ) as response:
                assert response.status == 404
        assert sorted(sink.message_ids) == ["m1", "m2", "m3", "m4", "m5"]


async def test_a_new_destination_starts_at_the_end_and_a_known_one_keeps_its_place(
    js_cluster: JetStreamCluster,
) -> None:
    async with Sink() as sink:
        config = make_config(js_cluster, hook("hook", sink.url))
        async with publisher(config) as publish:
            await publish(track(1))  # before the destination existed: not owed
            async with node(config, "a"):
                await publish(track(2))
                await sink.wait_for_delivered(1)
            await publish(track(3))  # while no node runs: waits in the consumer
            async with node(config, "b"):
                await sink.wait_for_delivered(2)
                await consumer_settled(publish.js, publish.layout, "hook")
        assert sink.message_ids == ["m2", "m3"]


async def test_replay_by_time_sends_a_window_again_to_one_destination_beside_live_traffic(
    js_cluster: JetStreamCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Sink() as sink, Sink() as other:
        text = config_toml(js_cluster, hook("hook", sink.url) + hook("other", other.url))
        path = tmp_path / "cdpd.toml"
        path.write_text(text)
        config = cdpd_config.parse(text)
        async with node(config, "a"), node(config, "b"), publisher(config) as publish:
            since = format_ms(now_ms() - 1000)
            await publish(track(1), track(2))
            await sink.wait_for_delivered(2)
            await other.wait_for_delivered(2)
            await consumer_settled(publish.js, publish.layout, "hook")
            until_at = format_ms(now_ms() + 1)
            capsys.readouterr()
            args = ["replay", "--destination", "hook", "--since", since, "--until", until_at]
            assert await run_cli(*args, "--config", str(path)) == 0
            assert "2 messages queued for hook" in capsys.readouterr().out
            await publish(track(3))  # live traffic goes on beside the job
            await sink.wait_for(lambda s: Counter(s.message_ids) == {"m1": 2, "m2": 2, "m3": 1})
            await other.wait_for_delivered(3)

            store = delivery_store(config, publish.js, SystemClock())
            await until(lambda: _no_jobs(store))
            assert sorted(other.message_ids) == ["m1", "m2", "m3"]  # the job was hook's alone
            # A window with nothing in it queues nothing.
            args = ["replay", "--destination", "hook", "--since", "2001-01-01T00:00:00Z"]
            assert (
                await run_cli(*args, "--until", "2001-01-02T00:00:00Z", "--config", str(path)) == 0
            )
            assert "0 messages queued for hook" in capsys.readouterr().out
        assert Counter(sink.message_ids) == {"m1": 2, "m2": 2, "m3": 1}


async def _no_jobs(store: Any) -> bool:
    return not await (await store.ledger()).jobs()


async def test_a_replayed_dead_letter_given_up_again_is_a_dead_letter_again(
    js_cluster: JetStreamCluster,
) -> None:
    async with Sink() as sink:
        sink.by_message["m1"] = _answers(status(400), status(400))
        config = make_config(js_cluster, hook("hook", sink.url))
        async with node(config, "a") as a, publisher(config) as publish:
            await publish(track(1))
            await until(lambda: dead.dead_letters(publish.js, publish.layout, "hook", 1))
            assert await a.store.replay_dead("hook", format_ms(now_ms())) == 1
            await sink.wait_for_requests(2)

            async def dead_again() -> list[Any]:
                return await a.store.dead("hook", 10)

            await until(dead_again)
            ((_, death, _, _),) = await dead.dead_letters(publish.js, publish.layout, "hook", 10)
            assert (death.message_id, death.attempts, death.seq) == ("m1", 2, 1)
            (status_,) = await a.store.show("m1", [routing_rule_of(config, "hook")])
            assert (status_.state, [h.status for h in status_.history]) == ("dead", [400, 400])


def routing_rule_of(config: Config, name: str) -> Any:
    from cdpd.delivery.service import routing_rule

    return routing_rule(next(d for d in config.destinations if d.name == name))
