"""Whatever arrives, cdpd answers with a status from its contract and keeps running."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdpd.app import Running
from tests.helpers import WRITE_KEY, basic_auth

AUTH = {"Authorization": basic_auth(WRITE_KEY)}
ALLOWED = {200, 400}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "type", "userId", "anonymousId", "messageId", "event", "name", "groupId", "previousId",
        "timestamp", "sentAt", "originalTimestamp", "properties", "traits", "context",
        "integrations", "writeKey", "batch",
    ]
)  # fmt: skip
messages = st.dictionaries(field_names, json_values, max_size=8)

_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def _post(url: str, data: bytes) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=AUTH) as resp:
        await resp.read()
        return resp.status


@_settings
@given(body=st.binary(max_size=300))
async def test_arbitrary_bytes(cdpd: Running, body: bytes) -> None:
    assert await _post(f"{cdpd.url}/v1/batch", body) in ALLOWED
    assert await _post(f"{cdpd.url}/v1/t", body) in ALLOWED


@_settings
@given(message=messages, envelope=messages)
async def test_arbitrary_messages(cdpd: Running, message: dict[str, Any], envelope: Any) -> None:
    single = msgspec.json.encode(message)
    batch = msgspec.json.encode({**envelope, "batch": [message, message]})
    assert await _post(f"{cdpd.url}/v1/track", single) in ALLOWED
    assert await _post(f"{cdpd.url}/v1/batch", batch) in ALLOWED


@_settings
@given(message=messages, where=st.integers(min_value=0), junk=st.binary(min_size=1, max_size=3))
async def test_messages_with_stray_bytes(
    cdpd: Running, message: dict[str, Any], where: int, junk: bytes
) -> None:
    """Valid JSON with bytes spliced in (often invalid UTF-8 inside a string)."""
    item = msgspec.json.encode({"type": "track", "userId": "u", "event": "E", **message})
    spot = where % (len(item) + 1)
    spliced = item[:spot] + junk + item[spot:]
    batch = b'{"batch": [' + spliced + b', {"type": "identify", "userId": "u2"}]}'
    assert await _post(f"{cdpd.url}/v1/batch", batch) in ALLOWED
    assert await _post(f"{cdpd.url}/v1/track", spliced) in ALLOWED


async def test_deeply_nested_json(cdpd: Running) -> None:
    deep = b'{"userId": "u", "event": "E", "properties": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert await _post(f"{cdpd.url}/v1/track", deep) == 400
    batch = b'{"batch": [{"type": "track", "userId": "u", "event": "E", "x": %s}]}' % (
        b"[" * 20_000 + b"]" * 20_000
    )
    assert await _post(f"{cdpd.url}/v1/batch", batch) in ALLOWED
    async with aiohttp.ClientSession() as http, http.get(f"{cdpd.url}/health") as resp:
        assert resp.status == 200
