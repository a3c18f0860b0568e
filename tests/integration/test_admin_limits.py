"""Admin query parameters are bounded: a value out of range is a clear 400, never a 500."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest

from cdpd import config as cdpd_config
from cdpd.app import running

BEARER = {"Authorization": "Bearer adm1n"}


@pytest.mark.parametrize(
    ("path", "wording"),
    [
        ("/admin/deliveries/dead?limit=99999999999999999999999", "limit must be a whole number"),
        ("/admin/deliveries/dead?limit=0", "limit must be a whole number"),
        ("/admin/deliveries/dead?limit=%C2%B2", "limit must be a whole number"),
        ("/admin/deliveries/dead?limit=-1", "limit must be a whole number"),
        ("/admin/deliveries/dead?destination=" + "d" * 5000, "destination is longer than"),
        ("/admin/violations?source=" + "s" * 5000, "source is longer than"),
        ("/admin/violations?event=" + "e" * 5000, "event is longer than"),
        ("/admin/violations?since=99999999999999999999999", "since: expected an ISO-8601"),
        ("/admin/deliveries/messages/" + "m" * 5000, "message_id is longer than"),
    ],
)
async def test_out_of_range_admin_parameters_are_a_400(
    make_config: Callable[..., cdpd_config.Config],
    http: aiohttp.ClientSession,
    path: str,
    wording: str,
) -> None:
    async with running(make_config('[admin]\ntoken = "adm1n"\n')) as server:
        async with http.get(server.url + path, headers=BEARER) as resp:
            body = await resp.json()
            assert resp.status == 400, body
        assert body["code"] == "invalid_request"
        assert wording in body["message"]
        async with http.get(
            server.url + "/admin/deliveries/dead?limit=10000", headers=BEARER
        ) as resp:
            assert resp.status == 200  # the largest limit is served
