"""`cdpd profiles show` and `cdpd profiles explain` on a store a real cdpd wrote."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import running
from tests.integration.test_profile_api import IDENTITY, JOURNEY, send

MakeConfig = Callable[..., cdpd_config.Config]
MERGING = (
    {"type": "screen", "anonymousId": "phone-1", "name": "Home", "messageId": "s1"},
    {"type": "identify", "anonymousId": "phone-1", "userId": "user-1", "messageId": "i3"},
    {"type": "identify", "anonymousId": "anon-1", "userId": "user-2", "messageId": "x1"},
)


async def profiles(tmp_path: Path, *argv: str) -> int:
    def call() -> int:
        return cli.main(["profiles", *argv, "--config", str(tmp_path / "cdpd.toml")])

    return await asyncio.to_thread(call)


@pytest.fixture
async def written(make_config: MakeConfig, http: aiohttp.ClientSession) -> None:
    async with running(make_config(IDENTITY)) as server:
        await send(http, server, *JOURNEY, *MERGING)


@pytest.mark.usefixtures("written")
async def test_show_lists_identifiers_traits_events_and_merges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await profiles(tmp_path, "show", "user_id:user-1", "--json")
    assert code == 0
    shown = msgspec.json.decode(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["segment_id"].startswith("use_")
    assert {f"{i['type']}:{i['id']}" for i in shown["identifiers"]} == {
        "user_id:user-1",
        "anonymous_id:anon-1",
        "anonymous_id:phone-1",
        "email:jane+x@example.com",
    }
    assert {t["name"]: t["value"] for t in shown["traits"]} == {
        "email": "jane+x@example.com",
        "plan": "pro",
    }
    assert shown["traits"][0]["source_id"] == "website"
    assert [e["message_id"] for e in shown["recent_events"]][:2] == ["i3", "s1"]
    (merge,) = shown["merges"]
    assert merge["message"]["message_id"] == "i3"
    assert merge["carried"] == ["user_id:user-1", "anonymous_id:phone-1"]
    assert await profiles(tmp_path, "show", "anonymous_id:phone-1") == 0
    text = capsys.readouterr().out
    assert '  plan = "pro"  (website, ' in text
    assert "  anonymous_id:phone-1  first seen " in text


@pytest.mark.usefixtures("written")
async def test_explain_gives_the_evidence_and_what_was_kept_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await profiles(tmp_path, "explain", "anonymous_id:anon-1")
    assert code == 0
    text = capsys.readouterr().out
    assert "user_id:user-1: message i1 (seq 2," in text
    assert "carrying user_id:user-1, anonymous_id:anon-1" in text
    assert "by message i3 (seq 6, carrying user_id:user-1, anonymous_id:phone-1)" in text
    # user-2's identify carried anon-1 too, but anon-1 could not join two user_ids:
    assert "kept out by limits (demoted)" in text
    code = await profiles(tmp_path, "explain", "user_id:user-2", "--json")
    explained = msgspec.json.decode(capsys.readouterr().out.strip().splitlines()[-1])
    assert explained["kept_out"] == [
        {
            "seq": 7,
            "message_id": "x1",
            "demoted": [{"collection": "users", "type": "anonymous_id", "id": "anon-1"}],
        }
    ]


@pytest.mark.usefixtures("written")
async def test_unknown_identifiers_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await profiles(tmp_path, "show", "user_id:nobody") == 1
    assert "no profile has user_id:nobody" in capsys.readouterr().err
    assert await profiles(tmp_path, "show", "nobody") == 2
    assert "expected TYPE:VALUE" in capsys.readouterr().err
