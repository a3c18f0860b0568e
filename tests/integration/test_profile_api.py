"""Segment's Profile API on a real cdpd: messages go in through the Tracking API, the identity
stage resolves them, and a real HTTP client reads profiles back in Segment's shapes."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from cdpd import config as cdpd_config
from cdpd.app import Running, running
from tests.helpers import WRITE_KEY, basic_auth

TOKEN = "pat_profile_token"
SPACE = "spa_test"
IDENTITY = f"""
[identity]
space = "{SPACE}"
access_tokens = ["{TOKEN}"]
"""


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{token}:".encode()).decode()}


@pytest.fixture
async def server(make_config: Callable[..., cdpd_config.Config]) -> AsyncIterator[Running]:
    async with running(make_config(IDENTITY)) as started:
        yield started


async def send(http: aiohttp.ClientSession, server: Running, *messages: dict[str, Any]) -> None:
    headers = {"Authorization": basic_auth(WRITE_KEY)}
    async with http.post(
        f"{server.url}/v1/batch", json={"batch": list(messages)}, headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()
    await resolved(server)


async def resolved(server: Running) -> None:
    identity = server.identity
    assert identity is not None
    async with asyncio.timeout(30):
        await identity.wait_resolved(server.writer.last_seq)


async def get(
    http: aiohttp.ClientSession, server: Running, path: str, **headers: str
) -> tuple[int, Any, aiohttp.ClientResponse]:
    url = f"{server.url}/v1/spaces/{SPACE}/collections/{path}"
    async with http.get(url, headers=headers or auth()) as resp:
        return resp.status, await resp.json(), resp


JOURNEY = (
    {"type": "page", "anonymousId": "anon-1", "name": "Pricing", "messageId": "p1"},
    {
        "type": "identify",
        "anonymousId": "anon-1",
        "userId": "user-1",
        "traits": {"email": "jane+x@example.com", "plan": "free", "name": "Jane"},
        "messageId": "i1",
    },
    {
        "type": "track",
        "userId": "user-1",
        "event": "Order Completed",
        "messageId": "t1",
        "properties": {"revenue": 42},
    },
    {
        "type": "identify",
        "userId": "user-1",
        "traits": {"plan": "pro", "name": None},
        "messageId": "i2",
    },
)


async def test_traits_in_segment_shape(http: aiohttp.ClientSession, server: Running) -> None:
    await send(http, server, *JOURNEY)
    status, body, resp = await get(http, server, "users/profiles/user_id:user-1/traits")
    assert status == 200
    assert body == {
        "traits": {"email": "jane+x@example.com", "plan": "pro"},
        "cursor": {
            "url": f"/v1/spaces/{SPACE}/collections/users/profiles/user_id:user-1/traits",
            "has_more": False,
            "next": "",
            "limit": 10,
        },
    }
    assert resp.headers["Request-Id"]


async def test_any_identifier_finds_the_profile_url_encoded(
    http: aiohttp.ClientSession, server: Running
) -> None:
    await send(http, server, *JOURNEY)
    email = quote("jane+x@example.com", safe="")
    for identifier in ("anonymous_id:anon-1", f"email:{email}"):
        status, body, _ = await get(http, server, f"users/profiles/{identifier}/traits")
        assert status == 200
        assert body["traits"]["plan"] == "pro"


async def test_traits_include_verbose_and_pages(
    http: aiohttp.ClientSession, server: Running
) -> None:
    await send(http, server, *JOURNEY)
    base = "users/profiles/user_id:user-1/traits"
    _, body, _ = await get(http, server, f"{base}?include=plan&verbose=true")
    plan = body["traits"]["plan"]
    assert list(body["traits"]) == ["plan"]
    assert plan["value"] == "pro"
    assert plan["source_id"] == "website"
    assert plan["updated_at"].endswith("Z")
    _, first, _ = await get(http, server, f"{base}?limit=1")
    assert first["traits"] == {"email": "jane+x@example.com"}
    assert first["cursor"]["has_more"] is True
    assert first["cursor"]["next"] == "email"
    _, second, _ = await get(http, server, f"{base}?limit=1&next=email")
    assert second["traits"] == {"plan": "pro"}
    assert second["cursor"]["has_more"] is False
    _, audiences, _ = await get(http, server, f"{base}?class=audience")
    assert audiences["traits"] == {}


async def test_external_ids(http: aiohttp.ClientSession, server: Running) -> None:
    await send(http, server, *JOURNEY)
    status, body, _ = await get(http, server, "users/profiles/user_id:user-1/external_ids")
    assert status == 200
    by_type = {item["type"]: item for item in body["data"]}
    assert set(by_type) == {"user_id", "anonymous_id", "email"}
    assert by_type["anonymous_id"] == {
        "source_id": "website",
        "collection": "users",
        "id": "anon-1",
        "type": "anonymous_id",
        "created_at": by_type["anonymous_id"]["created_at"],
        "encoding": "none",
        "first_message_id": "p1",
    }
    _, only, _ = await get(
        http, server, "users/profiles/user_id:user-1/external_ids?include=user_id,email&limit=1"
    )
    assert len(only["data"]) == 1
    assert only["cursor"]["has_more"] is True
    _, rest, _ = await get(
        http,
        server,
        "users/profiles/user_id:user-1/external_ids?include=user_id,email&limit=1"
        f"&next={only['cursor']['next']}",
    )
    assert {only["data"][0]["type"], rest["data"][0]["type"]} == {"user_id", "email"}


async def test_events_newest_first_with_filters_and_cursor(
    http: aiohttp.ClientSession, server: Running
) -> None:
    await send(http, server, *JOURNEY)
    base = "users/profiles/user_id:user-1/events"
    _, body, _ = await get(http, server, base)
    assert [e["message_id"] for e in body["data"]] == ["i2", "t1", "i1", "p1"]
    order = body["data"][1]
    assert order["type"] == "track"
    assert order["event"] == "Order Completed"
    assert order["properties"] == {"revenue": 42}
    assert order["source_id"] == "website"
    assert {"collection": "users", "type": "user_id", "id": "user-1", "encoding": "none"} in (
        order["external_ids"]
    )
    assert order["related"] == {"users": None}
    _, asc, _ = await get(http, server, f"{base}?sort=asc&limit=2")
    assert [e["message_id"] for e in asc["data"]] == ["p1", "i1"]
    assert asc["cursor"]["has_more"] is True
    _, rest, _ = await get(http, server, f"{base}?sort=asc&limit=2&next={asc['cursor']['next']}")
    assert [e["message_id"] for e in rest["data"]] == ["t1", "i2"]
    _, included, _ = await get(http, server, f"{base}?include=Order%20Completed")
    assert [e["message_id"] for e in included["data"]] == ["t1"]
    _, excluded, _ = await get(http, server, f"{base}?exclude=Order%20Completed")
    assert "t1" not in [e["message_id"] for e in excluded["data"]]
    _, future, _ = await get(http, server, f"{base}?start=2999-01-01T00:00:00Z")
    assert future["data"] == []


async def test_metadata(http: aiohttp.ClientSession, server: Running) -> None:
    await send(http, server, *JOURNEY)
    status, body, _ = await get(http, server, "users/profiles/anonymous_id:anon-1/metadata")
    assert status == 200
    metadata = body["metadata"]
    assert metadata["first_message_id"] == "p1"
    assert metadata["last_message_id"] == "i2"
    assert metadata["first_source_id"] == metadata["last_source_id"] == "website"
    assert metadata["expires_at"] is None
    assert metadata["created_at"] <= metadata["updated_at"]


async def test_accounts_traits_and_links(http: aiohttp.ClientSession, server: Running) -> None:
    await send(
        http,
        server,
        {
            "type": "group",
            "userId": "user-1",
            "groupId": "acme",
            "traits": {"plan": "ent"},
            "messageId": "g1",
        },
    )
    _, account, _ = await get(http, server, "accounts/profiles/group_id:acme/traits")
    assert account["traits"] == {"plan": "ent"}
    _, links, _ = await get(http, server, "users/profiles/user_id:user-1/links")
    assert links["data"] == [
        {
            "to_collection": "accounts",
            "external_ids": [
                {
                    "source_id": "website",
                    "collection": "accounts",
                    "id": "acme",
                    "type": "group_id",
                    "created_at": links["data"][0]["external_ids"][0]["created_at"],
                    "encoding": "none",
                    "first_message_id": "g1",
                }
            ],
        }
    ]
    _, back, _ = await get(http, server, "accounts/profiles/group_id:acme/links")
    assert back["data"][0]["to_collection"] == "users"


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("users/profiles/user_id:nobody/traits", None, 404, "not_found"),
        ("users/profiles/user_id:user-1/traits", auth("wrong"), 401, "authentication_error"),
        (
            "users/profiles/user_id:user-1/traits",
            {"Authorization": "Bearer x"},
            401,
            "authentication_error",
        ),
        ("users/profiles/user-1/traits", None, 400, "invalid_request_error"),
        ("users/profiles/USER_ID:user-1/traits", None, 400, "invalid_request_error"),
        ("users/profiles/user_id:user-1/traits?limit=201", None, 400, "validation_error"),
        ("users/profiles/user_id:user-1/traits?limit=0", None, 400, "validation_error"),
        ("users/profiles/user_id:user-1/traits?class=nope", None, 400, "validation_error"),
        ("users/profiles/user_id:user-1/events?sort=up", None, 400, "validation_error"),
        ("users/profiles/user_id:user-1/events?start=yesterday", None, 400, "validation_error"),
        ("users/profiles/user_id:user-1/external_ids?limit=101", None, 400, "validation_error"),
        ("users/profiles/user_id:user-1/nothing", None, 404, "not_found"),
    ],
)
async def test_errors_in_segment_shape(
    http: aiohttp.ClientSession,
    server: Running,
    path: str,
    headers: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    await send(http, server, *JOURNEY)
    got, body, resp = await get(http, server, path, **(headers or {}))
    assert got == status
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert resp.headers["Request-Id"]
    if code == "not_found" and "nobody" in path:
        assert body["error"]["message"] == "Profile was not found."


async def test_another_space_is_not_found(http: aiohttp.ClientSession, server: Running) -> None:
    url = f"{server.url}/v1/spaces/other/collections/users/profiles/user_id:u/traits"
    async with http.get(url, headers=auth()) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_rate_limit(
    http: aiohttp.ClientSession, make_config: Callable[..., cdpd_config.Config]
) -> None:
    async with running(make_config(IDENTITY + "rate_limit_per_s = 3\n")) as limited:
        url = f"{limited.url}/v1/spaces/{SPACE}/collections/users/profiles/user_id:u/traits"
        statuses = []
        for _ in range(6):
            async with http.get(url, headers=auth()) as resp:
                statuses.append(resp.status)
                body = await resp.json()
        assert statuses.count(429) >= 1
        assert body["error"]["code"] == "rate_limit_error"


async def test_delete_profile_identifier(http: aiohttp.ClientSession, server: Running) -> None:
    await send(http, server, *JOURNEY)
    url = f"{server.url}/v1/spaces/{SPACE}/collections/users/profiles/user_id:user-1"
    body = {"delete_external_ids": [{"id": "anon-1", "type": "anonymous_id"}]}
    async with http.post(f"{url}/external_ids/delete", json=body, headers=auth()) as resp:
        assert resp.status == 200, await resp.text()
    status, _, _ = await get(http, server, "users/profiles/anonymous_id:anon-1/traits")
    assert status == 404
    last = {"delete_external_ids": [{"id": "user-1", "type": "user_id"}]}
    async with http.post(f"{url}/external_ids/delete", json=last, headers=auth()) as resp:
        assert resp.status == 400
        assert "last user_id" in (await resp.json())["error"]["message"]
    two = {"delete_external_ids": [{"id": "a", "type": "email"}, {"id": "b", "type": "email"}]}
    async with http.post(f"{url}/external_ids/delete", json=two, headers=auth()) as resp:
        assert resp.status == 400
    async with http.post(f"{url}/external_ids/delete", data=b"{", headers=auth()) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request_error"


async def test_events_history_is_limited_to_the_configured_days(
    http: aiohttp.ClientSession, make_config: Callable[..., cdpd_config.Config], data_dir: Any
) -> None:
    async with running(make_config(IDENTITY)) as first:
        await send(http, first, JOURNEY[0])
    old = (datetime.now(UTC) - timedelta(days=15)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    payload = json.dumps({"type": "track", "anonymousId": "anon-1", "event": "Old",
                          "messageId": "old"})  # fmt: skip
    with sqlite3.connect(data_dir / "outbox.sqlite3") as conn:
        conn.execute(
            "INSERT INTO messages (message_id, source, type, event, user_id, anonymous_id,"
            " received_at, payload)"
            " VALUES ('old', 'website', 'track', 'Old', NULL, 'anon-1', ?, ?)",
            (old, payload),
        )
    async with running(make_config(IDENTITY)) as server:
        await resolved(server)
        _, body, _ = await get(http, server, "users/profiles/anonymous_id:anon-1/events")
        assert [e["message_id"] for e in body["data"]] == ["p1"]
        early = "users/profiles/anonymous_id:anon-1/events?start=2000-01-01T00:00:00Z"
        _, body, _ = await get(http, server, early)
        assert [e["message_id"] for e in body["data"]] == ["p1"]  # start cannot reach past it
    async with running(make_config(IDENTITY + "events_history_days = 30\n")) as longer:
        _, body, _ = await get(http, longer, "users/profiles/anonymous_id:anon-1/events")
        assert [e["message_id"] for e in body["data"]] == ["old", "p1"]
