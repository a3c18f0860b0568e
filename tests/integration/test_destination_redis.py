"""The Redis Streams destination against the local Redis: what XRANGE reads back for each
Segment spec example, mapped payloads and safe stream names, trimming, a wrong-type key, and a
Redis that is down and then back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests import spec_examples
from tests.brokers import EXAMPLES, Deliver, attempts, down_then_back, settled, stored, unique
from tests.contracts import harness
from tests.helpers import query
from tests.integration.test_delivery import delivered, deliveries, recorded, send, track


def destination(url: str, stream: str, extra: str = "") -> str:
    return harness.destination("redis", "redis", url=url, stream=stream) + extra


@pytest.fixture
async def client(redis_server: tuple[str, int]) -> AsyncIterator[aioredis.Redis]:
    host, port = redis_server
    async with aioredis.Redis(host=host, port=port, decode_responses=True) as redis:
        yield redis


@pytest.fixture
def url(redis_server: tuple[str, int]) -> str:
    return f"redis://{redis_server[0]}:{redis_server[1]}/0"


async def entries(redis: aioredis.Redis, key: str) -> list[dict[str, str]]:
    return [fields for _, fields in await redis.xrange(key)]


async def test_each_spec_example_is_an_entry_of_its_types_stream(
    deliver: Deliver, data_dir: Path, client: aioredis.Redis, url: str
) -> None:
    prefix = unique("cdpd-test-")
    await deliver(destination(url, prefix + ":{{type}}", "maxlen = 1000\n"), EXAMPLES)
    payloads = stored(data_dir)
    for kind, example in spec_examples.ALL.items():
        message_id = example["messageId"]
        assert await entries(client, f"{prefix}:{kind}") == [
            {"message": payloads[message_id], "messageId": message_id, "type": kind}
        ]
    assert {state for _, state, _, _ in deliveries(data_dir, "redis")} == {"delivered"}
    assert attempts(data_dir) == []  # delivered on the first attempt: nothing in the ledger
    await client.delete(*(f"{prefix}:{kind}" for kind in spec_examples.ALL))


async def test_a_mapping_reshapes_the_payload_and_slots_become_safe_tokens(
    deliver: Deliver, client: aioredis.Redis, url: str
) -> None:
    prefix = unique("cdpd-test-")
    action = f"""
[[destinations.actions]]
name = "orders"
subscribe = 'type = "track"'
[destinations.actions.mapping]
payload = {{ order = {{ "@path" = "$.properties.order_id" }}, id = {{ "@path" = "$.messageId" }} }}
stream = {{ "@template" = "{prefix}:{{{{event}}}}:{{{{properties.missing}}}}" }}
"""
    messages = [
        track(1, event="Order Completed", properties={"order_id": "o-1"}),
        track(2, event="a:b *> [x]", properties={"order_id": "o-2"}),
    ]
    await deliver(destination(url, "unused", action), messages)
    assert await entries(client, f"{prefix}:Order_Completed:_") == [
        {"message": '{"order":"o-1","id":"m1"}', "messageId": "m1", "type": "track"}
    ]
    assert await entries(client, f"{prefix}:a_b_____x_:_") == [
        {"message": '{"order":"o-2","id":"m2"}', "messageId": "m2", "type": "track"}
    ]
    await client.delete(f"{prefix}:Order_Completed:_", f"{prefix}:a_b_____x_:_")


async def test_a_stream_mapped_by_path_must_be_safe_as_it_is(
    deliver: Deliver, data_dir: Path, client: aioredis.Redis, url: str
) -> None:
    key = unique("cdpd-test-")
    action = """
[[destinations.actions]]
name = "keyed"
subscribe = 'type = "track"'
[destinations.actions.mapping]
stream = { "@path" = "$.properties.key" }
"""
    messages = [
        track(1, properties={"key": key}),
        track(2, properties={"key": "two words"}),
        track(3, properties={"key": "cdpd:*"}),
        track(4),
    ]
    await deliver(destination(url, "unused", action), messages, wait=settled)
    assert [(m, state) for m, state, _, _ in deliveries(data_dir, "redis")] == [
        ("m1", "delivered"),
        ("m2", "dead"),
        ("m3", "dead"),
        ("m4", "dead"),
    ]
    errors = [error for _, _, error, _ in attempts(data_dir) if error]
    assert sorted(e.split(" (the destination")[0] for e in errors) == [
        "keyed: stream 'cdpd:*': has a wildcard (*)",
        "keyed: stream 'two words': has a space or a control character",
        "keyed: stream must be a text, got None",
    ]
    assert [fields["messageId"] for fields in await entries(client, key)] == ["m1"]
    await client.delete(key)


async def test_maxlen_trims_the_stream_approximately(
    deliver: Deliver, client: aioredis.Redis, url: str
) -> None:
    key = unique("cdpd-test-")
    async with deliver.running(destination(url, key, "maxlen = 1\n")) as server:
        for start in range(0, 300, 100):
            await send(deliver.http, server, [track(n) for n in range(start, start + 100)])
        await delivered(server.delivery.lanes["redis"], 300)
    # MAXLEN ~ drops whole nodes of the stream (100 entries each by default), never all of it.
    assert 1 <= await client.xlen(key) < 300
    await client.delete(key)


async def test_a_key_of_another_type_is_refused_and_the_rest_delivered(
    deliver: Deliver, data_dir: Path, client: aioredis.Redis, url: str
) -> None:
    prefix = unique("cdpd-test-")
    await client.set(f"{prefix}:Taken", "a string, not a stream")
    entry = destination(url, prefix + ":{{event}}", "concurrency = 1\nbatch_size = 2\n")
    messages = [track(1, event="Taken"), track(2, event="Free")]
    await deliver(entry, messages, wait=settled)
    assert deliveries(data_dir, "redis") == [("m1", "dead", 1, 400), ("m2", "delivered", 1, None)]
    ((error,),) = _errors(data_dir, "m1")
    assert error.startswith("Redis: ResponseError: WRONGTYPE")
    assert len(await entries(client, f"{prefix}:Free")) == 1
    await client.delete(f"{prefix}:Taken", f"{prefix}:Free")


async def test_a_redis_that_is_down_is_retried_then_delivered(
    deliver: Deliver, data_dir: Path, client: aioredis.Redis, redis_server: tuple[str, int]
) -> None:
    key = unique("cdpd-test-")
    await down_then_back(
        deliver, redis_server, lambda port: destination(f"redis://127.0.0.1:{port}/0", key)
    )
    ((error,),) = _errors(data_dir, "m1")[:1]
    assert error.startswith("Redis: ConnectionError: ")
    assert [fields["messageId"] for fields in await entries(client, key)] == ["m1", "m2"]
    await client.delete(key)


def _errors(data_dir: Path, message_id: str) -> list[tuple[str]]:
    return query(
        data_dir,
        "SELECT error FROM attempts WHERE message_id = ? AND error IS NOT NULL ORDER BY id",
        (message_id,),
    )


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ('stream = "cdpd events"\n', "stream 'cdpd events': has a space"),
        ('stream = "cdpd:*"\n', "stream 'cdpd:*': has a wildcard (*)"),
        ('stream = "cdpd::{{type}}"\n', "has an empty level"),
        ('url_env = "CDPD_TEST_UNSET_REDIS_URL"\n', "url_env names CDPD_TEST_UNSET_REDIS_URL"),
    ],
)
def test_check_config_reports_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, says: str
) -> None:
    redis = harness.destination("redis", "redis") + settings
    if "url_env" not in settings:
        redis += 'url = "redis://127.0.0.1:6379/0"\n'
    assert says in harness.check_config(tmp_path, capsys, redis)


async def test_a_password_from_the_environment_and_the_connection_closed_at_shutdown(
    deliver: Deliver, client: aioredis.Redis, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, key = unique("cdpd-test-"), unique("cdpd-test-")
    await client.acl_setuser(
        user, enabled=True, passwords=["+s3cret-pw"], keys=[key], commands=["+xadd", "+client"]
    )
    monkeypatch.setenv("CDPD_TEST_REDIS_PASSWORD", "s3cret-pw")
    authed = url.replace("redis://", f"redis://{user}@")
    extra = 'password_env = "CDPD_TEST_REDIS_PASSWORD"\n'
    try:
        async with deliver.posting(destination(authed, key, extra), [track(1)]) as (_, lane):
            await delivered(lane, 1)
            assert "cdpd-redis" in await client_names(client, user)
        assert await client_names(client, user) == []
        assert len(await entries(client, key)) == 1
    finally:
        await client.acl_deluser(user)
        await client.delete(key)


async def test_a_wrong_password_is_retried_and_never_shown(
    deliver: Deliver,
    data_dir: Path,
    client: aioredis.Redis,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = unique("cdpd-test-")
    await client.acl_setuser(user, enabled=True, passwords=["+right-pw"], commands=["+xadd"])
    monkeypatch.setenv("CDPD_TEST_REDIS_PASSWORD", "wrong-pw")
    authed = url.replace("redis://", f"redis://{user}@")
    extra = 'password_env = "CDPD_TEST_REDIS_PASSWORD"\n'
    try:
        entry = destination(authed, unique("cdpd-test-"), extra)
        await deliver(entry, [track(1)], wait=recorded)
    finally:
        await client.acl_deluser(user)
    # The first attempt (another may follow before shutdown: the backoff has full jitter).
    (_, status, error, outcome) = attempts(data_dir)[0]
    assert (status, outcome) == (None, "retrying")
    assert error.startswith("credentials refused: Redis: AuthenticationError: ")
    assert "wrong-pw" not in error
    assert "right-pw" not in error


async def client_names(client: aioredis.Redis, user: str) -> list[str]:
    """The names of the connections logged in as `user` (this test's own: other runs may hold
    connections with the same name meanwhile)."""
    return [c["name"] for c in await client.client_list() if c.get("user") == user]
