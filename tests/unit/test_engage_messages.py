"""What Engage sends: Segment's documented Identify and Track shapes for audiences and
computed traits, `context.personas`, the integrations object, one message per identifier
value, exits to every combination, first sync vs later syncs, stable message ids."""

from __future__ import annotations

from cdpd.engage import messages
from cdpd.engage.catalog import Change
from cdpd.engage.messages import Connection, Identity

NOW = 1_772_368_200_000  # 2026-03-01T12:30:00Z
ENTERED = Change("first_time_shopper", "audience", "entered", True, False)
EXITED = Change("first_time_shopper", "audience", "exited", False, True)
COMPUTED = Change("total_revenue_180_days", "computed_trait", "computed", 450.0, None)
BOTH = Connection(destination="Braze", send_identify=True, send_track=True)


def build(change: Change, connection: Connection = BOTH, identity: Identity | None = None):
    identity = identity or Identity("u123", None, None)
    return messages.build(change, identity, connection, space_id="main", change_id="42", now_ms=NOW)


def test_audience_entry_as_identify_and_track() -> None:
    identify, track = build(ENTERED)
    personas = {
        "computation_class": "audience",
        "computation_id": messages.computation_id("audience", "first_time_shopper"),
        "computation_key": "first_time_shopper",
        "namespace": "spa_main",
        "space_id": "main",
    }
    assert identify == {
        "type": "identify",
        "messageId": identify["messageId"],
        "userId": "u123",
        "context": {"personas": personas},
        "integrations": {"All": False, "Braze": True},
        "timestamp": "2026-03-01T12:30:00.000Z",
        "traits": {"first_time_shopper": True},
    }
    assert track == {
        "type": "track",
        "messageId": track["messageId"],
        "userId": "u123",
        "context": {"personas": personas},
        "integrations": {"All": False, "Braze": True},
        "timestamp": "2026-03-01T12:30:00.000Z",
        "event": "Audience Entered",
        "properties": {"audience_key": "first_time_shopper", "first_time_shopper": True},
    }
    assert identify["messageId"] != track["messageId"]
    assert personas["computation_id"].startswith("aud_")


def test_audience_exit_sets_false() -> None:
    identify, track = build(EXITED)
    assert identify["traits"] == {"first_time_shopper": False}
    assert track["event"] == "Audience Exited"
    assert track["properties"] == {
        "audience_key": "first_time_shopper",
        "first_time_shopper": False,
    }


def test_computed_trait_as_identify_and_track() -> None:
    identify, track = build(COMPUTED)
    assert identify["traits"] == {"total_revenue_180_days": 450.0}
    assert identify["context"]["personas"]["computation_class"] == "trait"
    assert identify["context"]["personas"]["computation_id"].startswith("tra_")
    assert track["event"] == "Trait Computed"
    assert track["properties"] == {
        "trait_key": "total_revenue_180_days",
        "total_revenue_180_days": 450.0,
    }


def test_event_names_and_calls_follow_the_connection() -> None:
    connection = Connection(
        destination="Hook",
        send_identify=False,
        send_track=True,
        audience_entered_event="Joined",
        audience_exited_event="Left",
        trait_computed_event="Value Changed",
    )
    assert [m["event"] for m in build(ENTERED, connection)] == ["Joined"]
    assert [m["event"] for m in build(EXITED, connection)] == ["Left"]
    assert [m["event"] for m in build(COMPUTED, connection)] == ["Value Changed"]
    assert build(ENTERED, Connection(destination="Hook"))[0]["type"] == "identify"


def test_email_goes_in_traits_or_context_traits() -> None:
    identify, track = build(ENTERED, identity=Identity("u1", "a1", "jane@example.com"))
    assert identify["traits"]["email"] == "jane@example.com"
    assert identify["anonymousId"] == "a1"
    assert track["context"]["traits"] == {"email": "jane@example.com"}
    assert "email" not in track["properties"]


def test_one_message_per_email_and_every_combination_on_exit() -> None:
    identifiers = {"user_id": ["u1"], "anonymous_id": ["a1", "a2"], "email": ["x@e.com", "y@e.com"]}
    entries = messages.identities(identifiers, exit=False, profile_id="p1")
    assert entries == [Identity("u1", "a2", "x@e.com"), Identity("u1", "a2", "y@e.com")]
    exits = messages.identities(identifiers, exit=True, profile_id="p1")
    assert len(exits) == 4
    assert {(i.anonymous_id, i.email) for i in exits} == {
        ("a1", "x@e.com"),
        ("a1", "y@e.com"),
        ("a2", "x@e.com"),
        ("a2", "y@e.com"),
    }


def test_a_profile_without_ids_is_sent_under_its_profile_id() -> None:
    assert messages.identities({"email": ["x@e.com"]}, exit=False, profile_id="p1") == [
        Identity(None, "p1", "x@e.com")
    ]


def test_a_new_identifier_is_sent_the_current_values() -> None:
    before = {"anonymous_id": ["a1"]}
    after = {"anonymous_id": ["a1"], "email": ["x@e.com"]}
    assert messages.added_identities(before, after, profile_id="p1") == [
        Identity(None, "a1", "x@e.com")
    ]
    assert messages.added_identities(after, after, profile_id="p1") == []


def test_message_ids_are_stable_and_distinct() -> None:
    first = build(ENTERED)
    assert build(ENTERED) == first  # the same change sent again: the same ids
    again = messages.build(
        ENTERED, Identity("u123", None, None), BOTH, space_id="main", change_id="43", now_ms=NOW
    )
    assert {m["messageId"] for m in again}.isdisjoint(m["messageId"] for m in first)
    other = build(ENTERED, identity=Identity("u124", None, None))
    assert {m["messageId"] for m in other}.isdisjoint(m["messageId"] for m in first)


def test_first_sync_sends_every_member_and_value_but_no_exit() -> None:
    audience = messages.first_sync("audience", "vip", {"p1": True, "p2": False})
    assert audience == {"p1": Change("vip", "audience", "entered", True, False)}
    trait = messages.first_sync("computed_trait", "n", {"p1": 3, "p2": None, "p3": 0})
    assert set(trait) == {"p1", "p3"}
    assert trait["p3"] == Change("n", "computed_trait", "computed", 0, None)


def test_for_change_fans_out_over_destinations_and_identities() -> None:
    identifiers = {"user_id": ["u1"], "anonymous_id": ["a1", "a2"], "email": ["x@e.com"]}
    connections = [Connection(destination="A"), Connection(destination="B", send_track=True)]
    entered = messages.for_change(
        ENTERED,
        identifiers,
        connections,
        profile_id="p1",
        space_id="main",
        change_id="7",
        now_ms=NOW,
    )
    assert [
        (m["type"], next(iter(k for k in m["integrations"] if k != "All"))) for m in entered
    ] == [("identify", "A"), ("identify", "B"), ("track", "B")]
    exited = messages.for_change(
        EXITED,
        identifiers,
        connections,
        profile_id="p1",
        space_id="main",
        change_id="8",
        now_ms=NOW,
    )
    assert len(exited) == 2 * 3  # two anonymous ids, three messages each
    assert len({m["messageId"] for m in exited}) == 6
