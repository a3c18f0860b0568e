"""Account audiences inside a real cdpd: Group calls from the official Python client link users
to accounts, an account entering an audience sends the destination a Group call for the account
and an Identify for each of its users, and its exit sends `false` the same ways."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segment.analytics import Client

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import running
from cdpd.engage.messages import computation_id
from tests.helpers import audience_toml, engage_toml
from tests.integration.test_engage_stage import engage_messages, send
from tests.sink import Sink

MakeConfig = Callable[..., cdpd_config.Config]


def accounts_config(url: str, *, send_track: bool = False) -> str:
    pro = audience_toml(
        "pro_accounts",
        "ANY trait('plan') = 'pro'",
        send_group=True,
        send_identify=True,
        send_track=send_track,
    )
    return engage_toml(url) + pro


PERSONAS = {
    "computation_class": "audience",
    "computation_id": computation_id("audience", "pro_accounts"),
    "computation_key": "pro_accounts",
    "namespace": "spa_main",
    "space_id": "main",
}


def join_accounts(client: Client) -> None:
    client.identify("u1", {"email": "jane@example.com", "plan": "pro"})
    client.identify("u2", {"plan": "free"})
    client.identify("u3", {"plan": "free"})
    client.group("u1", "acme", {"name": "Acme"})
    client.group("u2", "acme")
    client.group("u3", "globex")


def downgrade(client: Client) -> None:
    client.identify("u1", {"plan": "free"})


def by_type(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return sorted(
        (m for m in messages if m["type"] == kind),
        key=lambda m: (m.get("userId", ""), m.get("event", "")),
    )


async def test_an_account_entry_and_exit_send_group_calls_and_member_identifies(
    make_config: MakeConfig,
) -> None:
    async with Sink() as sink, running(make_config(accounts_config(sink.url))) as server:
        await asyncio.to_thread(send, server, join_accounts)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 3, timeout_s=10)
        entered = engage_messages(sink)
        await asyncio.to_thread(send, server, downgrade)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 6, timeout_s=10)
        exited = engage_messages(sink)[len(entered) :]
    assert len(entered) == 3
    (group,) = by_type(entered, "group")
    assert group == {
        "type": "group",
        "groupId": "acme",
        "traits": {"pro_accounts": True},
        "context": {"personas": PERSONAS},
        "integrations": {"All": False, "crm": True},
        "messageId": group["messageId"],
        "timestamp": group["timestamp"],
        "receivedAt": group["receivedAt"],
    }
    jane, second = by_type(entered, "identify")
    assert (jane["userId"], jane["traits"]) == (
        "u1",
        {"pro_accounts": True, "email": "jane@example.com"},
    )
    assert (second["userId"], second["traits"]) == ("u2", {"pro_accounts": True})
    for message in (jane, second):
        assert message["context"]["personas"] == PERSONAS
        assert message["integrations"] == {"All": False, "crm": True}
    # globex has no pro user: nothing is sent about it or its user.
    assert all(m.get("groupId") != "globex" and m.get("userId") != "u3" for m in entered)

    assert len(exited) == 3
    (group_exit,) = by_type(exited, "group")
    assert (group_exit["groupId"], group_exit["traits"]) == ("acme", {"pro_accounts": False})
    assert [(m["userId"], m["traits"]["pro_accounts"]) for m in by_type(exited, "identify")] == [
        ("u1", False),
        ("u2", False),
    ]
    ids = [m["messageId"] for m in entered + exited]
    assert len(set(ids)) == len(ids)


async def test_members_get_audience_tracks_and_a_resync_sends_the_account_again(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    async with Sink() as sink:
        settings = make_config(accounts_config(sink.url, send_track=True))
        async with running(settings) as server:
            await asyncio.to_thread(send, server, join_accounts)
            await sink.wait_for(lambda s: len(engage_messages(s)) >= 5, timeout_s=10)
            first = engage_messages(sink)
            code = await asyncio.to_thread(
                cli.main,
                [
                    "audiences",
                    "resync",
                    "pro_accounts",
                    "--destination",
                    "crm",
                    "--config",
                    str(tmp_path / "cdpd.toml"),
                ],
            )
            assert code == 0
            await sink.wait_for(lambda s: len(engage_messages(s)) >= 10, timeout_s=10)
            again = engage_messages(sink)[len(first) :]
    tracks = by_type(first, "track")
    assert [(m["userId"], m["event"], m["properties"]) for m in tracks] == [
        ("u1", "Audience Entered", {"audience_key": "pro_accounts", "pro_accounts": True}),
        ("u2", "Audience Entered", {"audience_key": "pro_accounts", "pro_accounts": True}),
    ]
    assert tracks[0]["context"]["traits"] == {"email": "jane@example.com"}
    # The first sync after a resync sends the member account and its users again.
    assert sorted(m["type"] for m in again) == ["group", "identify", "identify", "track", "track"]
    assert {m["messageId"] for m in first}.isdisjoint(m["messageId"] for m in again)


def join_later(client: Client) -> None:
    client.identify("u4", {"email": "li@example.com", "plan": "free"})
    client.group("u4", "acme")


async def test_a_user_joining_a_member_account_gets_the_membership_alone(
    make_config: MakeConfig,
) -> None:
    async with Sink() as sink, running(make_config(accounts_config(sink.url))) as server:
        await asyncio.to_thread(send, server, join_accounts)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 3, timeout_s=10)
        entered = engage_messages(sink)
        await asyncio.to_thread(send, server, join_later)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 4, timeout_s=10)
        await asyncio.to_thread(send, server, downgrade)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 8, timeout_s=10)
        later = engage_messages(sink)[len(entered) :]
    # The account is already a member: no new Group call, one Identify for the new user.
    joined, *exited = later
    assert joined["type"] == "identify"
    assert (joined["userId"], joined["traits"]) == (
        "u4",
        {"pro_accounts": True, "email": "li@example.com"},
    )
    assert joined["context"]["personas"] == PERSONAS
    # The account's exit reaches every user it has now, the new one included.
    assert sorted((m["type"], m.get("userId")) for m in exited) == [
        ("group", None),
        ("identify", "u1"),
        ("identify", "u2"),
        ("identify", "u4"),
    ]
    assert all(False in m["traits"].values() for m in exited)
