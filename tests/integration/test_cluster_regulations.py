"""The regulation API on the JetStream backend: the SQLite backend's contract answered by any
node, suppressions in force on every node, and deletions worked by the lease holder from the
streams, a PostgreSQL warehouse and a vendor's deletion API, continued by another node when the
holder stops (a real three-server cluster, two cdpd nodes, real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from segment.analytics import Client

from cdpd import cli
from cdpd.cluster.layout import USER_ID, Layout
from cdpd.cluster.node import Node, running_node
from cdpd.cluster.regulations_stage import Regulations
from cdpd.cluster.suppression_feed import SUPPRESSION_BOUND_S
from cdpd.config import Config
from tests.cluster_support import (
    aux_records,
    jetstream_config,
    jetstream_text,
    stored_rows,
    stream_messages,
)
from tests.contracts.amplitude_deletion import AmplitudeDeletionContract
from tests.contracts.base import Scripted
from tests.governance_plans import governed_config, write_plan
from tests.helpers import WRITE_KEY, WarehouseProbe, basic_auth
from tests.integration.test_delivery import hook
from tests.integration.test_regulation_forwarding import amplitude
from tests.integration.test_regulations import GONE, KEPT, everything_of, track
from tests.jetstream_cluster import JetStreamCluster
from tests.regulations import (
    ADMIN,
    AUTH,
    BAD_REQUESTS,
    ENDPOINTS,
    refused,
    regulate,
    regulation,
    settled,
    warehouse_mentions,
)
from tests.sink import Sink, status

SHOP = '[[sources]]\nname = "shop"\nwrite_key = "wk_shop"\n'


def node_config(tmp_path: Path, cluster: JetStreamCluster, name: str, extra: str = "") -> Config:
    text = jetstream_text(tmp_path / name, cluster.urls, ADMIN + SHOP + extra)
    return jetstream_config(tmp_path / f"{name}.toml", text)


@contextlib.asynccontextmanager
async def two_nodes(
    tmp_path: Path, cluster: JetStreamCluster, extra: str = ""
) -> AsyncIterator[tuple[Node, Node]]:
    async with (
        running_node(node_config(tmp_path, cluster, "a", extra), node_name="a") as a,
        running_node(node_config(tmp_path, cluster, "b", extra), node_name="b") as b,
    ):
        yield a, b


def regulations_of(node: Node) -> Regulations:
    found = node.stages["regulations"]
    assert isinstance(found, Regulations)
    return found


async def send(http: aiohttp.ClientSession, node: Node, batch: list[dict[str, Any]]) -> None:
    headers = {"Authorization": basic_auth(WRITE_KEY)}
    async with http.post(f"{node.url}/v1/batch", json={"batch": batch}, headers=headers) as r:
        assert r.status == 200, await r.text()


async def get(http: aiohttp.ClientSession, node: Node, path: str) -> Any:
    async with http.get(f"{node.url}{path}", headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["data"]


async def test_any_node_answers_the_regulation_api_as_the_sqlite_backend_does(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with two_nodes(tmp_path, js_cluster) as (a, b):
        for method, path in ENDPOINTS:
            async with http.request(method, f"{b.url}{path}", json={}) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == "Bearer"
        for body, says in BAD_REQUESTS:
            await refused(http, a, body, says)

        created = []
        for node, kind, source in (
            (a, "SUPPRESS_ONLY", None),
            (b, "SUPPRESS_ONLY", "shop"),
            (a, "DELETE_ARCHIVE_ONLY", None),
        ):
            created.append(await regulate(http, node, kind, GONE, source=source))
            await asyncio.sleep(0.002)  # ids order by the millisecond of their creation
        first, second, third = created
        shown = await regulation(http, b, first)
        assert shown == await regulation(http, a, first)
        assert (shown["regulationType"], shown["overallStatus"], shown["targets"]) == (
            "SUPPRESS_ONLY",
            "FINISHED",
            [],
        )
        assert (shown["sourceId"], shown["subjectCount"]) == (None, 1)
        archive = await settled(http, b, third)
        assert archive["overallStatus"] == "FINISHED", archive
        assert [t["target"] for t in archive["targets"]] == ["outbox"]

        listed = await get(http, b, "/regulations")
        assert [r["id"] for r in listed["regulations"]] == [third, second, first]
        assert listed == await get(http, a, "/regulations")
        page = await get(http, a, "/regulations?pagination.count=2")
        assert [r["id"] for r in page["regulations"]] == [third, second]
        assert page["pagination"] == {"current": None, "next": second}
        rest = await get(http, b, f"/regulations?pagination.count=2&pagination.cursor={second}")
        assert [r["id"] for r in rest["regulations"]] == [first]
        by_source = await get(http, a, "/regulations/sources/shop")
        assert [r["id"] for r in by_source["regulations"]] == [second]
        assert [
            r["id"] for r in (await get(http, b, "/regulations?sourceId=shop"))["regulations"]
        ] == [second]
        async with http.get(f"{a.url}/regulations?status=DONE", headers=AUTH) as response:
            assert response.status == 400

        suppressions = await get(http, b, "/suppressions")
        assert [
            (s["userId"], s["sourceId"], s["regulateId"]) for s in suppressions["suppressions"]
        ] == [(GONE, None, first), (GONE, "shop", second)]
        assert suppressions == await get(http, a, "/suppressions")
        # A source's UNSUPPRESS leaves the workspace's; the workspace's lifts both.
        await regulate(http, b, "UNSUPPRESS", GONE, source="shop")
        assert len((await get(http, a, "/suppressions"))["suppressions"]) == 1
        await regulate(http, a, "UNSUPPRESS", GONE)
        assert (await get(http, b, "/suppressions"))["suppressions"] == []
        async with http.get(f"{b.url}/health") as response:
            assert response.status == 200


async def test_a_suppression_made_through_one_node_holds_at_the_other_within_the_bound(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with two_nodes(tmp_path, js_cluster) as (a, b):
        await regulate(http, a, "SUPPRESS_ONLY", GONE)
        answered = asyncio.get_running_loop().time()
        suppressions = b.ingest.governance.suppressions
        async with asyncio.timeout(SUPPRESSION_BOUND_S):
            while GONE not in suppressions.of("website"):  # noqa: ASYNC110 (a poll)
                await asyncio.sleep(0.001)
        delay_s = asyncio.get_running_loop().time() - answered
        assert delay_s < SUPPRESSION_BOUND_S

        errors: list[Any] = []
        client = Client(
            WRITE_KEY, host=b.url, sync_mode=True, on_error=lambda e, batch: errors.append(e)
        )

        def send_with_the_client() -> None:
            for user in (GONE, KEPT):
                client.track(user, "Order Completed", {"total": 12})
                client.identify(user, {"plan": "pro"})

        await asyncio.to_thread(send_with_the_client)
        assert errors == []
        rows = await stored_rows(js_cluster.urls)
        assert sorted((r.user_id, r.type) for r in rows) == [(KEPT, "identify"), (KEPT, "track")]
        assert suppressions.suppressed == {"website": 2}
        async with http.get(f"{b.url}/metrics") as response:
            assert 'cdpd_privacy_suppressed_total{source="website"} 2.0' in await response.text()
        # A node started afterwards reads the suppressions in force before it takes requests.
        late = node_config(tmp_path, js_cluster, "c")
        async with running_node(late, node_name="c") as c:
            assert GONE in c.ingest.governance.suppressions.of("shop")


async def _dead_letters(servers: list[str]) -> list[dict[str, str]]:
    """The headers of every dead letter."""
    dead = await stream_messages(servers, Layout().dead_stream)
    return [dict(message.headers or {}) for message in dead]


async def _eventually(check: Any, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 (a poll of the cluster)
            await asyncio.sleep(0.1)


@pytest.fixture
def postgres_warehouse(postgres_test_dsn: str) -> WarehouseProbe:
    return WarehouseProbe(
        kind="postgres",
        toml=f'[[warehouses]]\nname = "wh"\ntype = "postgres"\ndsn = "{postgres_test_dsn}"\n'
        "interval_s = 0.2\n",
        dsn=postgres_test_dsn,
    )


async def test_suppress_with_delete_leaves_nothing_of_the_user_in_the_cluster(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    http: aiohttp.ClientSession,
    postgres_warehouse: WarehouseProbe,
) -> None:
    warehouse = postgres_warehouse
    await warehouse.empty()
    async with AmplitudeDeletionContract() as amp, Sink() as sink:
        amp.know(GONE, KEPT)
        for user in (GONE, KEPT):  # the identifies are refused: dead letters
            sink.by_message[f"d-i-{user}"] = deque([status(400)])
        screens_only = amplitude(amp).replace('types = ["identify"]', 'types = ["screen"]')
        extra = warehouse.toml + screens_only + hook("hook", sink.url)
        async with two_nodes(tmp_path, js_cluster, extra) as (a, b):
            await send(http, a, everything_of(GONE, "d") + everything_of(KEPT, "d"))

            async def loaded() -> bool:
                with contextlib.suppress(Exception):  # the tables appear with the first load
                    return bool(await warehouse_mentions(warehouse, KEPT)) and bool(
                        await warehouse_mentions(warehouse, GONE)
                    )
                return False

            async def buried() -> bool:
                return len(await _dead_letters(js_cluster.urls)) >= 2

            await _eventually(loaded)
            await _eventually(buried)

            regulation_id = await regulate(http, b, "SUPPRESS_WITH_DELETE", GONE)
            await send(http, a, everything_of(GONE, "e"))  # suppressed: never stored
            found = await settled(http, a, regulation_id, timeout_s=30)
            await asyncio.sleep(0.5)  # a later sync brings nothing back
            assert found["overallStatus"] == "FINISHED", found
            targets = {t["target"]: t for t in found["targets"]}
            # the track, the identify, the reject and the identify's dead letter
            assert targets["outbox"]["rowsRemoved"] == 4
            assert targets["warehouse:wh"]["status"] == "FINISHED"
            assert targets["warehouse:wh"]["rowsRemoved"] >= 3
            assert targets["destination:amp"]["rowsRemoved"] == 1
            assert targets["destination:hook"]["rowsRemoved"] == 1
            assert amp.deleted == [GONE]
            deletes = [m for m in sink.messages if m["type"] == "delete"]
            assert [m["userId"] for m in deletes] == [GONE]
            assert await warehouse_mentions(warehouse, GONE) == {}
            assert await warehouse_mentions(warehouse, KEPT)

    rows = await stored_rows(js_cluster.urls)
    assert sorted((r.user_id, r.message_id) for r in rows) == [
        (KEPT, f"d-i-{KEPT}"),
        (KEPT, f"d-t-{KEPT}"),
    ]
    rejects = await aux_records(js_cluster.urls, "rejects")
    assert [r["message_id"] for r in rejects] == [f"d-bad-{KEPT}"]
    dead = await _dead_letters(js_cluster.urls)
    assert [h[USER_ID] for h in dead] == [KEPT]


async def test_a_deletion_in_progress_is_continued_by_the_next_lease_holder(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with AmplitudeDeletionContract() as amp:
        amp.know(GONE)
        amp.script.extend([Scripted(503, "down"), Scripted(503, "down")])
        slow_retry = "retry = { backoff_min_s = 1.0, backoff_max_s = 1.0 }\n"
        extra = amplitude(amp).split("retry = {")[0] + slow_retry
        async with contextlib.AsyncExitStack() as first_stack:
            a = await first_stack.enter_async_context(
                running_node(node_config(tmp_path, js_cluster, "a", extra), node_name="a")
            )
            leader_a = regulations_of(a).leader

            async def a_leads() -> bool:
                return leader_a.lease.held

            await _eventually(a_leads)
            b_config = node_config(tmp_path, js_cluster, "b", extra)
            async with running_node(b_config, node_name="b") as b:
                await send(http, b, [track("f-1", GONE), track("f-2", KEPT)])
                regulation_id = await regulate(http, b, "DELETE_ONLY", GONE)

                async def tried_once() -> bool:
                    found = await regulation(http, b, regulation_id)
                    targets = {t["target"]: t for t in found["targets"]}
                    return bool(targets["destination:amp"]["attempts"] >= 1)

                await _eventually(tried_once)
                await first_stack.aclose()  # the holder stops; b takes the lease
                found = await settled(http, b, regulation_id, timeout_s=30)
                assert regulations_of(b).leader.lease.held
    assert found["overallStatus"] == "FINISHED", found
    targets = {t["target"]: t for t in found["targets"]}
    assert (targets["outbox"]["attempts"], targets["outbox"]["rowsRemoved"]) == (1, 1)
    assert targets["destination:amp"]["attempts"] == 3
    assert amp.deleted == [GONE]
    assert [r.user_id for r in await stored_rows(js_cluster.urls)] == [KEPT]


async def test_the_cli_creates_lists_and_shows_regulations_on_the_cluster(
    tmp_path: Path,
    js_cluster: JetStreamCluster,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with two_nodes(tmp_path, js_cluster) as (a, b):
        config_path = str(tmp_path / "a.toml")
        create = ["regulations", "create", "SUPPRESS_ONLY", GONE, "--config", config_path]
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, create) == 0
        regulation_id = re.findall("[0-9a-f]{24}", capsys.readouterr().out)[-1]
        suppressions = b.ingest.governance.suppressions
        async with asyncio.timeout(SUPPRESSION_BOUND_S):
            while GONE not in suppressions.of("website"):  # noqa: ASYNC110 (a poll)
                await asyncio.sleep(0.01)
        assert (await regulation(http, a, regulation_id))["overallStatus"] == "FINISHED"
        listing = ["regulations", "list", "--json", "--config", config_path]
        assert await asyncio.to_thread(cli.main, listing) == 0
        lines = capsys.readouterr().out.splitlines()  # the nodes' logs among them
        (listed,) = [json.loads(line) for line in lines if line.startswith('{"id"')]
        assert (listed["id"], listed["regulationType"]) == (regulation_id, "SUPPRESS_ONLY")
        show = ["regulations", "show", regulation_id, "--config", config_path]
        assert await asyncio.to_thread(cli.main, show) == 0
        assert "status      FINISHED" in capsys.readouterr().out
        verify = ["regulations", "verify", regulation_id, "--config", config_path]
        assert await asyncio.to_thread(cli.main, verify) == 2
        assert "not available on the JetStream backend" in capsys.readouterr().err


async def test_violations_and_blocked_messages_go_with_the_user_and_a_source_scope_holds(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    plan = write_plan(tmp_path / "plan.json")
    website = 'blocked_events = ["Banned"]\n'
    base = governed_config(tmp_path / "a", plan, website=website, extra=ADMIN)
    text = jetstream_text(tmp_path / "a", js_cluster.urls, base=base)
    async with running_node(jetstream_config(tmp_path / "a.toml", text), node_name="a") as a:
        bad = [
            {**track(f"v-{user}", user), "properties": {"revenue": "lots"}} for user in (GONE, KEPT)
        ]
        await send(http, a, [*bad, track("v-banned", GONE, "Banned")])
        other = {"Authorization": basic_auth("wk_violations")}
        batch = {"batch": [track(f"o-{user}", user) for user in (GONE, KEPT)]}
        async with http.post(f"{a.url}/v1/batch", json=batch, headers=other) as response:
            assert response.status == 200
        violations = await aux_records(js_cluster.urls, "violations")
        assert {v["message_id"] for v in violations} == {f"v-{GONE}", f"v-{KEPT}"}
        scoped = await regulate(http, a, "DELETE_INTERNAL", KEPT, source="violations")
        everywhere = await regulate(http, a, "DELETE_INTERNAL", GONE)
        for regulation_id in (scoped, everywhere):
            found = await settled(http, a, regulation_id, timeout_s=30)
            assert found["overallStatus"] == "FINISHED", found
    violations = await aux_records(js_cluster.urls, "violations")
    assert {v["message_id"] for v in violations} == {f"v-{KEPT}"}
    assert await aux_records(js_cluster.urls, "blocked_messages") == []
    rows = await stored_rows(js_cluster.urls)
    assert [(r.message_id, r.source) for r in rows] == [(f"v-{KEPT}", "website")]


async def test_without_the_cluster_the_api_answers_503_and_serves_again_after(
    tmp_path: Path, js_cluster: JetStreamCluster, http: aiohttp.ClientSession
) -> None:
    async with running_node(node_config(tmp_path, js_cluster, "a"), node_name="a") as a:
        regulation_id = await regulate(http, a, "SUPPRESS_ONLY", GONE)
        js_cluster.stop_all()
        try:
            body = {
                "regulationType": "SUPPRESS_ONLY",
                "subjectType": "USER_ID",
                "subjectIds": ["u"],
            }
            async with http.post(f"{a.url}/regulations", json=body, headers=AUTH) as response:
                assert response.status == 503
                assert (await response.json())["code"] == "cluster_unreachable"
            async with http.get(f"{a.url}/regulations", headers=AUTH) as response:
                assert response.status == 503
        finally:
            for index in range(len(js_cluster.client_ports)):
                js_cluster.start(index)
            await js_cluster.ready()
        # A client retries until the cluster answers again; ingest still drops the user (the
        # set in force was kept through the outage).
        batch = {"batch": [track("z-1", GONE), track("z-2", KEPT)]}
        write = {"Authorization": basic_auth(WRITE_KEY)}
        shown = f"{a.url}/regulations/{regulation_id}"
        async with asyncio.timeout(60):
            while True:
                async with http.post(f"{a.url}/v1/batch", json=batch, headers=write) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.2)
            while True:  # the bucket's stream may elect its leader after the messages stream's
                async with http.get(shown, headers=AUTH) as r:
                    if r.status == 200:
                        assert (await r.json())["data"]["regulation"]["overallStatus"] == "FINISHED"
                        break
                await asyncio.sleep(0.2)
    assert [r.user_id for r in await stored_rows(js_cluster.urls)] == [KEPT]
