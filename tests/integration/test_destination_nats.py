"""The NATS JetStream destination against the local nats-server: what a JetStream consumer reads
back for each Segment spec example, deduplication of a replayed messageId, a missing stream
(retried with a clear error, then created), `create_stream`, and a server that is down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from tests import spec_examples
from tests.brokers import EXAMPLES, Deliver, attempts, down_then_back, settled, stored, unique
from tests.contracts import harness
from tests.helpers import FakeClock
from tests.integration.test_delivery import delivered, deliveries, recorded, track
from tests.integration.test_delivery_operations import ADMIN, BEARER


def destination(servers: str, subject: str, extra: str = "") -> str:
    return harness.destination("nats", "nats", servers=[servers], subject=subject) + extra


@pytest.fixture
def url(nats_server: tuple[str, int]) -> str:
    return f"nats://{nats_server[0]}:{nats_server[1]}"


@pytest.fixture
async def client(url: str) -> AsyncIterator[Nats]:
    connection = await nats.connect(url)
    yield connection
    await connection.close()


@pytest.fixture
async def stream(client: Nats) -> AsyncIterator[tuple[str, str]]:
    """A stream of its own for the test: (stream name, subject prefix)."""
    name, prefix = unique("CDPD_TEST_"), unique("cdpd-test-")
    js = client.jetstream()
    await js.add_stream(name=name, subjects=[f"{prefix}.>"])
    yield name, prefix
    await js.delete_stream(name)


async def consume(js: JetStreamContext, name: str, subject: str, count: int) -> list[Any]:
    """Every message in the stream, read by an ephemeral pull consumer."""
    consumer = await js.pull_subscribe(subject, stream=name)
    messages = await consumer.fetch(count, timeout=5)
    await consumer.unsubscribe()
    return messages


async def test_each_spec_example_is_published_once_and_acknowledged(
    deliver: Deliver, data_dir: Path, client: Nats, url: str, stream: tuple[str, str]
) -> None:
    name, prefix = stream
    await deliver(destination(url, prefix + ".{{type}}"), EXAMPLES)
    js = client.jetstream()
    received = await consume(js, name, f"{prefix}.>", 6)
    payloads = stored(data_dir)
    by_subject = {m.subject: m for m in received}
    assert sorted(by_subject) == sorted(f"{prefix}.{kind}" for kind in spec_examples.ALL)
    for kind, example in spec_examples.ALL.items():
        message = by_subject[f"{prefix}.{kind}"]
        assert message.headers == {"Nats-Msg-Id": example["messageId"]}
        assert message.data.decode() == payloads[example["messageId"]]
    assert (await js.stream_info(name)).state.messages == 6
    assert attempts(data_dir) == []  # delivered on the first attempt: nothing in the ledger


async def test_a_replayed_message_is_dropped_by_the_streams_duplicate_window(
    deliver: Deliver, data_dir: Path, client: Nats, url: str, stream: tuple[str, str]
) -> None:
    name, prefix = stream
    http = deliver.http
    entry = ADMIN + destination(url, prefix + ".{{event}}")
    async with deliver.posting(entry, [track(1)]) as (server, lane):
        await delivered(lane, 1)
        replay = {"destination": "nats", "since": "2000-01-01T00:00:00Z"}
        async with http.post(f"{server.url}/admin/replay", json=replay, headers=BEARER) as resp:
            assert (await resp.json()) == {"destination": "nats", "queued": 1}
        await delivered(lane, 2)
    info = await client.jetstream().stream_info(name)
    assert info.state.messages == 1  # the second publish was acknowledged as a duplicate
    assert attempts(data_dir) == []  # both sends succeeded: nothing in the ledger


async def test_a_missing_stream_is_retried_with_a_clear_error_until_it_exists(
    deliver: Deliver, data_dir: Path, client: Nats, url: str, clock: FakeClock
) -> None:
    name, prefix = unique("CDPD_TEST_"), unique("cdpd-test-")
    async with deliver.posting(destination(url, prefix + ".x"), [track(1)], clock) as (_, lane):
        await recorded(lane, 1)
        assert deliveries(data_dir, "nats") == [("m1", "retrying", 1, 503)]
        js = client.jetstream()
        await js.add_stream(name=name, subjects=[f"{prefix}.>"])
        clock.advance(300)
        await delivered(lane, 1)
    assert attempts(data_dir)[0] == (
        1,
        503,
        f"NATS: no JetStream stream takes subject '{prefix}.x' (create one whose subjects"
        " match it, or set create_stream)",
        "retrying",
    )
    assert (await js.stream_info(name)).state.messages == 1
    await js.delete_stream(name)


async def test_a_message_the_stream_refuses_is_dead_with_jetstreams_reason(
    deliver: Deliver, data_dir: Path, client: Nats, url: str
) -> None:
    name, prefix = unique("CDPD_TEST_"), unique("cdpd-test-")
    js = client.jetstream()
    await js.add_stream(name=name, subjects=[f"{prefix}.>"], max_msg_size=1000)
    entry = destination(url, prefix + ".{{type}}", "concurrency = 1\n")
    try:
        small = {"type": "alias", "userId": "u", "previousId": "p", "messageId": "s"}
        messages = [track(1, properties={"big": "x" * 2000}), small]
        await deliver(entry, messages, wait=settled)
        assert deliveries(data_dir, "nats") == [("m1", "dead", 1, 400), ("s", "delivered", 1, None)]
        assert attempts(data_dir)[0][2].startswith(
            "NATS: JetStream error 400 (10054): message size exceeds maximum allowed"
        )
    finally:
        await js.delete_stream(name)


async def test_create_stream_makes_the_stream_on_connecting(
    deliver: Deliver, client: Nats, url: str
) -> None:
    name, prefix = unique("CDPD_TEST_"), unique("cdpd-test-")
    extra = f'create_stream = "{name}"\n'
    messages = [track(1), {"type": "identify", "userId": "u", "messageId": "i"}]
    await deliver(destination(url, prefix + ".{{type}}", extra), messages)
    js = client.jetstream()
    info = await js.stream_info(name)
    assert info.config.subjects == [f"{prefix}.*"]
    assert info.state.messages == 2
    await js.delete_stream(name)


async def test_a_server_that_is_down_is_retried_then_delivered(
    deliver: Deliver,
    data_dir: Path,
    client: Nats,
    nats_server: tuple[str, int],
    stream: tuple[str, str],
) -> None:
    name, prefix = stream
    port = await down_then_back(
        deliver,
        nats_server,
        lambda port: destination(f"nats://127.0.0.1:{port}", prefix + ".e"),
    )
    error = attempts(data_dir)[0][2]
    assert error.startswith(
        f"NATS: ConnectionError: no server of nats://127.0.0.1:{port} took a connection"
        " (ConnectionRefusedError: "
    )
    assert (await client.jetstream().stream_info(name)).state.messages == 2


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ('subject = "cdpd.*"\n', "subject 'cdpd.*': has a wildcard (*)"),
        ('subject = "cdpd.>"\n', "has a wildcard (>)"),
        ('subject = "cdpd..{{type}}"\n', "has an empty level"),
        ('subject = "cdpd {{type}}"\n', "has a space"),
        ('password_env = "CDPD_TEST_UNSET_NATS"\n', "password_env names CDPD_TEST_UNSET_NATS"),
        (
            'subject = "cdpd.x{{type}}"\ncreate_stream = "CDPD"\n',
            "create_stream 'CDPD': its subject 'cdpd.x*' is not a valid filter",
        ),
        ('create_stream = "cdpd events"\n', "a stream name is letters, digits and _"),
    ],
)
def test_check_config_reports_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, says: str
) -> None:
    entry = harness.destination("nats", "nats") + settings
    assert says in harness.check_config(tmp_path, capsys, entry)
