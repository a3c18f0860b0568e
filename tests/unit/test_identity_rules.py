"""Segment's documented identity resolution examples against the pure rules."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cdpd.config import parse
from cdpd.identity.graph import Graph, Resolution
from cdpd.identity.identifiers import Rules, extract
from cdpd.identity.resolve import MAX_IDENTIFIERS, MAX_MERGES, resolve

DAY_MS = 86_400_000
START_MS = 1_780_000_000_000


def rules_from(toml: str = "") -> Rules:
    config = parse(
        '[identity]\nspace = "sp"\naccess_tokens = ["t"]\n' + toml,
    )
    return Rules(config.identity)


class World:
    """A graph and a clock; `send` resolves one message and applies it."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.graph = Graph()
        self.rules = rules or rules_from()
        self.seq = itertools.count(1)
        self.at_ms = START_MS

    def send(self, **payload: Any) -> Resolution:
        payload.setdefault("type", "track")
        seq = next(self.seq)
        resolution = resolve(
            self.graph,
            payload,
            self.rules,
            seq=seq,
            message_id=f"m{seq}",
            source="web",
            at_ms=self.at_ms,
        )
        self.graph.apply(resolution)
        self.at_ms += 1000
        return resolution

    def profile_of(self, kind: str, value: str, collection: str = "users") -> str | None:
        owner = self.graph.owner(collection, (kind, value))
        return None if owner is None else self.graph.canonical(owner)

    def identifiers(self, kind: str, value: str) -> set[tuple[str, str]]:
        pid = self.profile_of(kind, value)
        assert pid is not None
        return set(self.graph.profiles[pid].identifiers)

    def traits(self, kind: str, value: str) -> dict[str, Any]:
        pid = self.profile_of(kind, value)
        assert pid is not None
        return {
            k: t.value for k, t in self.graph.profiles[pid].traits.items() if t.value is not None
        }


def test_new_identifiers_create_a_profile_with_a_segment_style_id() -> None:
    world = World()
    r = world.send(type="identify", userId="u1", anonymousId="a1", traits={"email": "j@x.io"})
    assert r.user is not None
    assert r.user.created
    assert r.user.profile_id.startswith("use_")
    assert len(r.user.profile_id) == 31
    assert world.identifiers("user_id", "u1") == {
        ("user_id", "u1"),
        ("anonymous_id", "a1"),
        ("email", "j@x.io"),
    }


def test_a_known_identifier_attaches_new_ones() -> None:
    world = World()
    first = world.send(anonymousId="a1", event="Viewed")
    second = world.send(type="identify", anonymousId="a1", userId="u1")
    assert second.user is not None
    assert not second.user.created
    assert second.user.profile_id == first.user.profile_id  # type: ignore[union-attr]
    assert second.user.attached == (("user_id", "u1"),)


def test_two_profiles_sharing_a_new_message_merge_into_the_oldest() -> None:
    world = World()
    anonymous = world.send(anonymousId="a1")
    known = world.send(type="identify", userId="u1")
    merging = world.send(type="identify", userId="u1", anonymousId="a1")
    assert merging.user is not None
    assert merging.user.profile_id == anonymous.user.profile_id  # type: ignore[union-attr]
    assert merging.user.merged == (known.user.profile_id,)  # type: ignore[union-attr]
    assert world.graph.profiles[known.user.profile_id].merged_into == anonymous.user.profile_id  # type: ignore[union-attr]


def test_segment_demotion_example_gives_a_new_profile() -> None:
    """Profile {user_id abc123, email jane@} + event {user_id abc456, email jane@}: two user_ids
    would break the limit of 1, so email is demoted, and abc456 alone finds nothing."""
    world = World()
    world.send(type="identify", userId="abc123", traits={"email": "jane@example.com"})
    r = world.send(type="identify", userId="abc456", traits={"email": "jane@example.com"})
    assert r.user is not None
    assert r.user.created
    assert r.user.demoted == (("email", "jane@example.com"),)
    assert world.identifiers("user_id", "abc456") == {("user_id", "abc456")}
    assert world.profile_of("email", "jane@example.com") == world.profile_of("user_id", "abc123")


def test_a_shared_anonymous_id_does_not_fuse_two_users() -> None:
    """Blob-user protection: a kiosk browser without a reset at logout."""
    world = World()
    world.send(type="identify", userId="alice", anonymousId="kiosk")
    r = world.send(type="identify", userId="bob", anonymousId="kiosk")
    assert r.user is not None
    assert r.user.demoted == (("anonymous_id", "kiosk"),)
    assert world.profile_of("user_id", "alice") != world.profile_of("user_id", "bob")
    assert world.profile_of("anonymous_id", "kiosk") == world.profile_of("user_id", "alice")


def test_a_shared_team_email_does_not_fuse_two_users() -> None:
    world = World()
    world.send(type="identify", userId="alice", traits={"email": "team@company.com"})
    world.send(type="identify", userId="bob", traits={"email": "team@company.com"})
    world.send(type="identify", userId="carol", traits={"email": "team@company.com"})
    owners = {world.profile_of("user_id", u) for u in ("alice", "bob", "carol")}
    assert len(owners) == 3


def test_an_event_bridging_two_known_users_demotes_its_lowest_priority_identifier() -> None:
    world = World()
    world.send(type="identify", userId="alice", anonymousId="a1")
    world.send(type="identify", userId="bob", traits={"email": "bob@x.io"})
    # anonymous_id a1 (alice) and email bob@ (bob) would fuse two user_ids: anonymous_id ranks
    # below email, so it is demoted and the event goes to bob.
    r = world.send(anonymousId="a1", context={"traits": {"email": "bob@x.io"}})
    assert r.user is not None
    assert not r.user.merged
    assert r.user.demoted == (("anonymous_id", "a1"),)
    assert r.user.profile_id == world.profile_of("user_id", "bob")
    assert world.profile_of("user_id", "alice") != world.profile_of("user_id", "bob")


def test_the_weekly_window_counts_only_values_first_seen_in_the_last_seven_days() -> None:
    world = World(rules_from('[[identity.identifiers]]\ntype = "anonymous_id"\nlimit = 2\n'))
    assert world.rules["anonymous_id"].window == "weekly"
    world.send(type="identify", userId="u1", anonymousId="a1")
    world.send(type="identify", userId="u1", anonymousId="a2")
    refused = world.send(type="identify", userId="u1", anonymousId="a3")
    assert refused.user is not None
    assert refused.user.demoted == (("anonymous_id", "a3"),)
    assert world.profile_of("anonymous_id", "a3") is None
    world.at_ms += 8 * DAY_MS
    accepted = world.send(type="identify", userId="u1", anonymousId="a3")
    assert accepted.user is not None
    assert accepted.user.attached == (("anonymous_id", "a3"),)


@pytest.mark.parametrize(
    ("window", "days_later", "attached"),
    [
        ("ever", 400, False),
        ("monthly", 29, False),
        ("monthly", 31, True),
        ("annually", 364, False),
        ("annually", 366, True),
    ],
)
def test_limit_windows(window: str, days_later: int, attached: bool) -> None:
    toml = f'[[identity.identifiers]]\ntype = "email"\nlimit = 1\nwindow = "{window}"\n'
    world = World(rules_from(toml))
    world.send(type="identify", userId="u1", traits={"email": "one@x.io"})
    world.at_ms += days_later * DAY_MS
    r = world.send(type="identify", userId="u1", traits={"email": "two@x.io"})
    assert r.user is not None
    assert (("email", "two@x.io") in r.user.attached) is attached


@pytest.mark.parametrize("value", ["0", "000-000", "-1", "null", "anonymous", "-"])
def test_suggested_blocked_values_are_never_identifiers(value: str) -> None:
    world = World()
    r = world.send(type="identify", userId=value, anonymousId="a1")
    assert r.user is not None
    assert r.user.attached == (("anonymous_id", "a1"),)
    assert ("users", ("user_id", value)) in r.blocked


def test_configured_blocked_values_and_patterns() -> None:
    toml = (
        '[[identity.identifiers]]\ntype = "email"\nblocked_values = ["test@test.com"]\n'
        'blocked_patterns = ["@example\\\\.org$"]\n'
    )
    rules = rules_from(toml)
    for email, blocked in (("test@test.com", True), ("a@example.org", True), ("a@b.io", False)):
        found = extract({"type": "identify", "traits": {"email": email}}, rules)
        assert (("email", email) in found.users) is not blocked


def test_suggested_blocked_values_can_be_turned_off() -> None:
    rules = rules_from('[[identity.identifiers]]\ntype = "user_id"\nblock_suggested = false\n')
    assert extract({"userId": "0"}, rules).users == [("user_id", "0")]


def test_null_removes_a_trait_and_an_empty_string_is_kept() -> None:
    world = World()
    world.send(type="identify", userId="u1", traits={"plan": "pro", "name": "Jane"})
    world.send(type="identify", userId="u1", traits={"plan": None, "name": ""})
    assert world.traits("user_id", "u1") == {"name": ""}


def test_merged_traits_keep_the_last_updated_value() -> None:
    world = World()
    world.send(type="identify", anonymousId="a1", traits={"plan": "free", "color": "red"})
    world.send(type="identify", userId="u1", traits={"plan": "pro"})
    world.send(type="identify", anonymousId="a1", traits={"color": None})
    world.send(type="track", userId="u1", anonymousId="a1", event="Merged")
    assert world.traits("user_id", "u1") == {"plan": "pro"}  # color's removal is newer


def test_track_properties_are_not_traits() -> None:
    world = World()
    world.send(type="track", userId="u1", event="E", properties={"plan": "pro"})
    assert world.traits("user_id", "u1") == {}


def test_alias_never_merges_profiles() -> None:
    world = World()
    world.send(type="identify", userId="old")
    world.send(type="identify", userId="new")
    r = world.send(type="alias", userId="new", previousId="old")
    assert r.user is not None
    assert not r.user.merged
    assert world.profile_of("user_id", "old") != world.profile_of("user_id", "new")


def test_group_calls_resolve_accounts_and_link_them_to_users() -> None:
    world = World()
    r = world.send(type="group", userId="u1", groupId="g1", traits={"plan": "enterprise"})
    assert r.account is not None
    assert r.account.profile_id.startswith("acc_")
    account = world.profile_of("group_id", "g1", "accounts")
    user = world.profile_of("user_id", "u1")
    assert account is not None
    assert user is not None
    assert world.graph.profiles[user].links == {account}
    assert world.graph.profiles[account].traits["plan"].value == "enterprise"
    assert world.traits("user_id", "u1") == {}  # group traits belong to the account


def test_a_merged_user_keeps_its_account_links() -> None:
    world = World()
    world.send(type="group", anonymousId="a1", groupId="g1")
    world.send(type="identify", userId="u1")
    world.send(type="identify", userId="u1", anonymousId="a1")
    user = world.profile_of("user_id", "u1")
    account = world.profile_of("group_id", "g1", "accounts")
    assert user is not None
    assert account is not None
    assert world.graph.profiles[user].links == {account}
    assert world.graph.profiles[account].links == {user}


def test_default_identifiers_are_extracted_from_their_documented_places() -> None:
    payload = {
        "type": "track",
        "userId": "u1",
        "anonymousId": "a1",
        "integrations": {"Google Analytics": {"clientId": "ga.1"}},
        "context": {
            "traits": {"email": "j@x.io"},
            "device": {
                "type": "ios",
                "id": "dev1",
                "advertisingId": "ad1",
                "adTrackingEnabled": True,
                "token": "push1",
            },
            "externalIds": [
                {"id": "z1", "type": "Zendesk_ID", "collection": "users", "encoding": "none"},
                {"id": "missing-encoding", "type": "x", "collection": "users"},
            ],
        },
    }
    assert set(extract(payload, rules_from()).users) == {
        ("user_id", "u1"),
        ("anonymous_id", "a1"),
        ("email", "j@x.io"),
        ("ios.id", "dev1"),
        ("ios.idfa", "ad1"),
        ("ios.push_token", "push1"),
        ("ga_client_id", "ga.1"),
        ("zendesk_id", "z1"),
    }


def test_advertising_ids_need_ad_tracking_enabled() -> None:
    payload = {"context": {"device": {"type": "android", "advertisingId": "ad1"}}}
    assert extract(payload, rules_from()).users == []


def test_custom_identifier_from_a_trait_key_in_camel_or_snake_case() -> None:
    rules = rules_from('[[identity.identifiers]]\ntype = "phone"\nkey = "phoneNumber"\n')
    identify = {"type": "identify", "traits": {"phone_number": "+15550100"}}
    track = {"type": "track", "properties": {"phoneNumber": "+15550101"}}
    assert extract(identify, rules).users == [("phone", "+15550100")]
    assert extract(track, rules).users == [("phone", "+15550101")]


def test_priorities_user_id_then_email_then_alphabetical() -> None:
    rules = rules_from()
    ranked = sorted(
        [("phone", "1"), ("anonymous_id", "a"), ("email", "e"), ("user_id", "u")], key=rules.rank
    )
    assert [t for t, _ in ranked] == ["user_id", "email", "anonymous_id", "phone"]
    pinned = rules_from('[[identity.identifiers]]\ntype = "phone"\npriority = 1\n')
    assert sorted(["email", "phone"], key=lambda t: pinned[t].rank) == ["phone", "email"]


def test_past_the_merge_limit_events_still_resolve_without_merging() -> None:
    world = World(rules_from('[[identity.identifiers]]\ntype = "anonymous_id"\nlimit = 1000\n'))
    world.send(type="identify", userId="u1", anonymousId="a0")
    for n in range(1, MAX_MERGES + 3):
        world.send(anonymousId=f"a{n}")
        world.send(userId="u1", anonymousId=f"a{n}")
    main = world.graph.profiles[world.profile_of("user_id", "u1")]  # type: ignore[index]
    assert main.merges == MAX_MERGES
    r = world.send(userId="u1", anonymousId=f"a{MAX_MERGES + 2}", event="Still resolves")
    assert r.user is not None
    assert r.user.profile_id == main.id


def test_messages_without_identifiers_resolve_to_nothing() -> None:
    world = World()
    r = world.send(type="track", event="Nobody", userId="", anonymousId="null")
    assert r.user is None
    assert r.account is None


def test_group_ids_longer_than_500_characters_are_not_identifiers() -> None:
    found = extract({"type": "group", "groupId": "g" * 501}, rules_from())
    assert found.accounts == []


def test_a_separated_identifier_is_never_merged_nor_attached_to_another_profile() -> None:
    world = World()
    world.send(type="identify", userId="u1", anonymousId="a1")
    world.send(anonymousId="kiosk")
    world.graph.separated.add(("users", ("anonymous_id", "kiosk")))
    merge = world.send(type="identify", userId="u1", anonymousId="kiosk")
    assert merge.user is not None
    assert merge.user.merged == ()
    assert merge.user.demoted == (("anonymous_id", "kiosk"),)
    assert world.profile_of("anonymous_id", "kiosk") != world.profile_of("user_id", "u1")
    world.graph.separated.add(("users", ("anonymous_id", "fresh")))
    attach = world.send(type="identify", userId="u1", anonymousId="fresh")
    assert attach.user is not None
    assert attach.user.demoted == (("anonymous_id", "fresh"),)
    alone = world.send(anonymousId="fresh", context={"traits": {"email": "k@x.io"}})
    assert alone.user is not None
    assert alone.user.created  # its own profile, which may grow
    assert set(world.identifiers("anonymous_id", "fresh")) == {
        ("anonymous_id", "fresh"),
        ("email", "k@x.io"),
    }


def test_a_replayed_older_trait_does_not_overwrite_a_newer_one() -> None:
    world = World()
    late = world.send(type="identify", userId="u1", traits={"plan": "pro"})
    older = resolve(
        world.graph,
        {"type": "identify", "userId": "u1", "traits": {"plan": "free"}},
        world.rules,
        seq=0,
        message_id="m0",
        source="web",
        at_ms=START_MS - 1000,
    )
    world.graph.apply(older)
    assert late.user is not None
    assert world.traits("user_id", "u1") == {"plan": "pro"}


def test_past_the_identifier_limit_no_mapping_is_added_but_events_resolve() -> None:
    toml = '[[identity.identifiers]]\ntype = "anonymous_id"\nlimit = 5000\nwindow = "ever"\n'
    world = World(rules_from(toml))
    for n in range(MAX_IDENTIFIERS - 1):
        world.send(userId="u1", anonymousId=f"a{n}")
    assert len(world.identifiers("user_id", "u1")) == MAX_IDENTIFIERS
    r = world.send(userId="u1", anonymousId="one-too-many", event="Still resolves")
    assert r.user is not None
    assert r.user.profile_id == world.profile_of("user_id", "u1")
    assert r.user.demoted == (("anonymous_id", "one-too-many"),)
    assert len(world.identifiers("user_id", "u1")) == MAX_IDENTIFIERS


def test_a_suppressed_user_gets_no_profile_and_is_named_on_none() -> None:
    world = World()
    suppressed = frozenset({"gone"})
    seq = next(world.seq)
    payloads: list[dict[str, Any]] = [
        {"type": "identify", "userId": "gone", "anonymousId": "a1", "traits": {"plan": "x"}},
        {"type": "group", "userId": "kept", "groupId": "gone"},
        {
            "type": "identify",
            "userId": "kept",
            "context": {"externalIds": [{"id": "gone", "type": "user_id"}]},
        },
        {"type": "identify", "userId": "kept", "traits": {"email": "gone"}},
    ]
    for payload in payloads:
        resolution = resolve(
            world.graph,
            payload,
            world.rules,
            seq=seq,
            message_id=f"m{seq}",
            source="web",
            at_ms=world.at_ms,
            suppressed=suppressed,
        )
        assert "gone" not in repr(resolution.blocked)
        world.graph.apply(resolution)
        seq = next(world.seq)
    assert world.profile_of("user_id", "gone") is None
    assert world.profile_of("anonymous_id", "a1") is None  # the suppressed user's message
    assert world.profile_of("group_id", "gone", "accounts") is None
    assert world.identifiers("user_id", "kept") == {("user_id", "kept")}
