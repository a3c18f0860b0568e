"""The deletion API contract servers refuse what the real APIs refuse: the tests of
forwarding pass only because cdpd's requests meet these rules."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.contracts.amplitude_deletion import AmplitudeDeletionContract
from tests.contracts.customerio import API_KEY, SITE_ID, CustomerIoTrack
from tests.contracts.mixpanel_deletion import PATH, MixpanelDeletionContract
from tests.helpers import basic_auth

AMPLITUDE_AUTH = {"Authorization": basic_auth("amp_key:amp_secret", colon=False)}


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_amplitudes_rules(http: aiohttp.ClientSession) -> None:
    async with AmplitudeDeletionContract() as amp:
        amp.know("u1")
        url = f"{amp.url}/api/2/deletions/users"
        ok = {"user_ids": ["u1"], "requester": "cdpd"}
        assert (await _post(http, url, ok, {}))[0] == 401
        wrong = {"Authorization": basic_auth("amp_key:nope", colon=False)}
        assert (await _post(http, url, ok, wrong))[0] == 401
        assert (await _post(http, url, {"user_ids": []}, AMPLITUDE_AUTH))[0] == 400
        many = {"user_ids": [f"u{n}" for n in range(101)], "ignore_invalid_id": "True"}
        assert (await _post(http, url, many, AMPLITUDE_AUTH))[0] == 400
        flag = {"user_ids": ["u1"], "ignore_invalid_id": True}  # a string, not a boolean
        assert (await _post(http, url, flag, AMPLITUDE_AUTH))[0] == 400
        status, answer = await _post(http, url, {"user_ids": ["u1", "u2"]}, AMPLITUDE_AUTH)
        assert (status, answer["invalid_user_ids"]) == (400, ["u2"])
        status, answer = await _post(http, url, ok, AMPLITUDE_AUTH)
        assert status == 200
        assert answer[0]["amplitude_ids"][0]["requester"] == "cdpd"
        assert amp.deleted == ["u1"]


async def test_mixpanels_rules(http: aiohttp.ClientSession) -> None:
    async with MixpanelDeletionContract() as mp:
        bearer = {"Authorization": "Bearer mp_gdpr_oauth"}
        url = f"{mp.url}{PATH}"
        ok = {"distinct_ids": ["u1"], "compliance_type": "GDPR"}
        assert (await _post(http, url, ok, bearer))[0] == 400  # no token
        assert (await _post(http, f"{url}?token=mp_token", ok, {}))[0] == 401
        assert (await _post(http, f"{url}?token=other", ok, bearer))[0] == 403
        many = {"distinct_ids": [str(n) for n in range(2001)], "compliance_type": "GDPR"}
        assert (await _post(http, f"{url}?token=mp_token", many, bearer))[0] == 400
        odd = {"distinct_ids": ["u1"], "compliance_type": "HIPAA"}
        assert (await _post(http, f"{url}?token=mp_token", odd, bearer))[0] == 400
        status, answer = await _post(http, f"{url}?token=mp_token", ok, bearer)
        assert (status, answer["status"]) == (200, "ok")
        assert mp.deleted == ["u1"]


async def test_customerios_rules(http: aiohttp.ClientSession) -> None:
    async with CustomerIoTrack() as cio:
        auth = {"Authorization": basic_auth(f"{SITE_ID}:{API_KEY}", colon=False)}
        url = f"{cio.url}/api/v1/customers"
        async with http.delete(f"{url}/u1") as response:
            assert response.status == 401
        async with http.delete(f"{url}/{'x' * 151}", headers=auth) as response:
            assert response.status == 400
        async with http.delete(f"{url}/a%2Fb", headers=auth) as response:
            assert response.status == 200
        assert cio.deleted == ["a/b"]
