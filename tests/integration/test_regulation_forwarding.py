"""Deletions forwarded to vendors' deletion APIs (contract servers that enforce their fields,
auth and status codes), each target tracked and retried like a delivery; and the local file
destination's files rewritten without the user."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.privacy.regulations_proof import file_mentions
from tests.contracts.amplitude_deletion import AmplitudeDeletionContract
from tests.contracts.base import Scripted
from tests.contracts.customerio import API_KEY, SITE_ID, CustomerIoTrack
from tests.contracts.harness import destination
from tests.contracts.mixpanel_deletion import PATH as MIXPANEL_PATH
from tests.contracts.mixpanel_deletion import MixpanelDeletionContract
from tests.integration.test_delivery import delivered, hook, send
from tests.regulations import ADMIN, regulate, regulation, settled
from tests.sink import Sink, status

MakeConfig = Callable[..., cdpd_config.Config]
FAST_RETRY = "retry = { backoff_min_s = 0.05, backoff_max_s = 0.1 }\n"


def amplitude(server: AmplitudeDeletionContract) -> str:
    return (
        destination(
            "amplitude",
            "amp",
            api_key="amp_key",
            secret_key="amp_secret",
            api_url=f"{server.url}/2/httpapi",
            deletion_url=f"{server.url}/api/2/deletions/users",
            types=["identify"],
        )
        + FAST_RETRY
    )


def mixpanel(server: MixpanelDeletionContract, *, oauth: bool = True) -> str:
    options: dict[str, Any] = {"project_token": "mp_token"}
    if oauth:
        options["gdpr_token"] = "mp_gdpr_oauth"
    return (
        destination(
            "mixpanel",
            "mp",
            api_url=server.url,
            deletion_url=f"{server.url}{MIXPANEL_PATH}",
            types=["identify"],
            **options,
        )
        + FAST_RETRY
    )


def customerio(server: CustomerIoTrack) -> str:
    return (
        destination(
            "customerio",
            "cio",
            site_id=SITE_ID,
            api_key=API_KEY,
            api_url=server.url,
            types=["identify"],
        )
        + FAST_RETRY
    )


async def test_each_vendor_is_asked_to_delete_in_its_own_terms(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    users = [f"user-{n:03d}" for n in range(150)]
    async with (
        AmplitudeDeletionContract() as amp,
        MixpanelDeletionContract() as mp,
        CustomerIoTrack() as cio,
    ):
        amp.know(*users[:120])  # the rest were never sent to Amplitude
        config = make_config(ADMIN + amplitude(amp) + mixpanel(mp) + customerio(cio))
        async with running(config) as server:
            regulation_id = await regulate(http, server, "DELETE_ONLY", *users)
            found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "FINISHED", found
    targets = {t["target"]: t for t in found["targets"]}
    assert targets["destination:amp"]["rowsRemoved"] == 150
    assert targets["destination:mp"]["rowsRemoved"] == 150
    assert targets["destination:cio"]["rowsRemoved"] == 150
    assert sorted(amp.deleted) == users[:120]
    assert len(amp.accepted) == 2  # 100 ids a request
    assert amp.requesters == ["cdpd", "cdpd"]
    assert sorted(mp.deleted) == users
    assert all(task["compliance_type"] == "GDPR" for task in mp.tasks.values())
    assert sorted(cio.deleted) == users
    assert {call.method for call in cio.calls} == {"DELETE"}


async def test_a_refused_credential_fails_the_target_at_once(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with (
        AmplitudeDeletionContract(secret_key="other") as amp,
        running(make_config(ADMIN + amplitude(amp))) as server,
    ):
        regulation_id = await regulate(http, server, "SUPPRESS_WITH_DELETE", "user-1")
        found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "FAILED"
    target = {t["target"]: t for t in found["targets"]}["destination:amp"]
    assert (target["status"], target["attempts"], target["lastStatus"]) == ("FAILED", 1, 401)
    assert "Invalid API key or secret key" in target["lastError"]
    assert "amp_secret" not in target["lastError"]
    outbox = {t["target"]: t for t in found["targets"]}["outbox"]
    assert outbox["status"] == "FINISHED"  # the internal deletion happened all the same


async def test_throttled_and_failing_vendors_are_retried_until_they_take_it(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with MixpanelDeletionContract() as mp, CustomerIoTrack() as cio:
        mp.script.extend([Scripted(429, '{"status":"error","error":"rate limited"}')])
        cio.script.extend([Scripted(503, "down"), Scripted(500, "down")])
        async with running(make_config(ADMIN + mixpanel(mp) + customerio(cio))) as server:
            regulation_id = await regulate(http, server, "DELETE_ONLY", "user-1")
            found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "FINISHED", found
    targets = {t["target"]: t for t in found["targets"]}
    assert (targets["destination:mp"]["attempts"], targets["destination:mp"]["status"]) == (
        2,
        "FINISHED",
    )
    assert targets["destination:cio"]["attempts"] == 3
    assert targets["destination:cio"]["lastStatus"] is None  # cleared by the success
    assert mp.deleted == ["user-1"]
    assert cio.deleted == ["user-1"]


async def test_destinations_that_cannot_delete_make_it_a_partial_success(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with MixpanelDeletionContract() as mp:
        no_gdpr = mixpanel(mp, oauth=False)
        slack = destination("slack", "chat", webhook_url="http://127.0.0.1:9/hook")
        async with running(make_config(ADMIN + no_gdpr + slack)) as server:
            regulation_id = await regulate(http, server, "DELETE_ONLY", "user-1")
            found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "PARTIAL_SUCCESS", found
    targets = {t["target"]: t for t in found["targets"]}
    assert targets["destination:mp"]["status"] == "NOT_SUPPORTED"
    assert "gdpr_token" in targets["destination:mp"]["lastError"]
    assert targets["destination:chat"]["status"] == "NOT_SUPPORTED"
    assert targets["outbox"]["status"] == "FINISHED"
    assert mp.calls == []


def _lines(directory: Path) -> list[str]:
    found = []
    for path in sorted(directory.iterdir()):
        opener: Any = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as file:
            found += file.read().splitlines()
    return found


def _all_packed(directory: Path) -> bool:
    """Every rotated file is gzipped: nothing is being packed, so each line is in one file
    (a file being packed is there twice until its plain copy is removed)."""
    names = [path.name for path in directory.iterdir()]
    rotated = [name for name in names if name != "events.ndjson"]
    return bool(rotated) and all(name.endswith(".gz") for name in rotated)


async def test_local_files_are_rewritten_without_the_user(
    make_config: MakeConfig, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    folder = tmp_path / "files"
    entry = destination(
        "file",
        "archive",
        path=str(folder / "events.ndjson"),
        max_bytes=600,  # a few lines a file: rotated, and gzipped
        fsync="none",
    )
    messages = [
        {"type": "track", "event": "Viewed", "messageId": f"g-{n}-{user}", "userId": user}
        for n in range(12)
        for user in ("user-gone", "user-kept")
    ]
    async with running(make_config(ADMIN + entry)) as server:
        lane = server.delivery.lanes["archive"]
        await send(http, server, messages)
        await delivered(lane, len(messages))
        files = server.delivery.senders["archive"]
        async with files.upkept:  # type: ignore[attr-defined]
            await files.upkept.wait_for(lambda: _all_packed(folder))  # type: ignore[attr-defined]
        before = _lines(folder)
        assert sum("user-gone" in line for line in before) == 12
        regulation_id = await regulate(http, server, "DELETE_INTERNAL", "user-gone")
        found = await settled(http, server, regulation_id)
        await send(http, server, [{"type": "track", "event": "After", "userId": "user-kept"}])
        await delivered(lane, len(messages) + 1)
    assert found["overallStatus"] == "FINISHED", found
    target = {t["target"]: t for t in found["targets"]}["file:archive"]
    assert target["rowsRemoved"] == 12
    after = _lines(folder)
    assert not any("user-gone" in line for line in after)
    assert sum("user-kept" in line for line in after) == 13
    assert not [p for p in folder.iterdir() if p.name.endswith(".erasing")]
    assert file_mentions(make_config(ADMIN + entry), ["user-gone"]) == {"archive": 0}
    assert file_mentions(make_config(ADMIN + entry), ["user-kept"]) == {"archive": 13}


async def test_a_regulation_carries_on_after_a_restart(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink(default=status(503)) as sink:
        config = make_config(ADMIN + hook("hook", sink.url) + FAST_RETRY)
        async with running(config) as server:
            regulation_id = await regulate(http, server, "DELETE_ONLY", "user-1")
            await sink.wait_for_requests(2)
            before = await regulation(http, server, regulation_id)
        assert before["overallStatus"] == "RUNNING"
        sink.default = status(200)
        async with running(config) as server:
            found = await settled(http, server, regulation_id)
    assert found["overallStatus"] == "FINISHED", found
    target = {t["target"]: t for t in found["targets"]}["destination:hook"]
    assert target["attempts"] >= 3
    assert [m["userId"] for m in sink.messages] == ["user-1"]
