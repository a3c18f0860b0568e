"""The messages Engage sends for a change: pure functions from a change, the profile's
identifiers and a destination's connection settings to Segment-shaped Identify and Track
payloads, exactly as Engage sends them:

    identify  traits: {"<audience_key>": true|false} or {"<trait_key>": value}
    track     event "Audience Entered" / "Audience Exited" / "Trait Computed" (renamable),
              properties: {"audience_key": key, key: true|false} or {"trait_key": key, key: v}

Every message carries `context.personas` (`computation_class`, `computation_id`,
`computation_key`, `namespace`, `space_id`) and `integrations: {"All": false, "<Destination>":
true}`, so it reaches only that destination. A profile with several values of one identifier
gets one message per value: one per email (in `traits.email` for an Identify,
`context.traits.email` for a Track), each with the profile's `userId`; exits go to every
combination of user id, anonymous id and email, so no copy of the profile keeps a stale
membership. The `messageId` is derived from the change, the destination and the identifiers,
so sending the same change again after a restart produces the same ids (destinations dedupe).

An account audience's change is sent, per connection, as a Group call for the account
(`groupId`, `traits: {"<audience_key>": true|false}`; `send_group`) and/or as the
Identify/Track above to each user linked to the account (`send_identify`, `send_track`).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import msgspec

from cdpd.engage.catalog import Change, Kind
from cdpd.model.timestamps import format_ms


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """How one definition is sent to one destination."""

    destination: str
    send_identify: bool = True
    send_track: bool = False
    send_group: bool = False  # account audiences: a Group call per account
    audience_entered_event: str = "Audience Entered"
    audience_exited_event: str = "Audience Exited"
    trait_computed_event: str = "Trait Computed"


class Identity(msgspec.Struct, frozen=True):
    user_id: str | None
    anonymous_id: str | None
    email: str | None


def computation_id(kind: Kind, key: str) -> str:
    """A stable id for a definition: `aud_`/`tra_` and a hash of its key (keys never change)."""
    prefix = "aud_" if kind == "audience" else "tra_"
    return prefix + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def personas(kind: Kind, key: str, space_id: str) -> dict[str, str]:
    return {
        "computation_class": "audience" if kind == "audience" else "trait",
        "computation_id": computation_id(kind, key),
        "computation_key": key,
        "namespace": f"spa_{space_id}",
        "space_id": space_id,
    }


def identities(identifiers: dict[str, list[str]], *, exit: bool, profile_id: str) -> list[Identity]:
    """Who a change is sent as: one identity per email (per user id, anonymous id and email
    combination for an exit). A profile with no user id and no anonymous id is sent under its
    profile id as the anonymous id, as every Segment message needs one of the two."""
    user_ids: list[str | None] = [*identifiers.get("user_id", ())] or [None]
    emails: list[str | None] = [*identifiers.get("email", ())] or [None]
    anonymous = identifiers.get("anonymous_id") or []
    if exit:
        anonymous_ids: list[str | None] = [*anonymous] or [None]
    else:
        anonymous_ids = [anonymous[-1] if anonymous else None]
    result = []
    for user_id, anonymous_id, email in itertools.product(user_ids, anonymous_ids, emails):
        if user_id is None and anonymous_id is None:
            anonymous_id = profile_id
        result.append(Identity(user_id, anonymous_id, email))
    return result


def added_identities(
    before: dict[str, list[str]], after: dict[str, list[str]], *, profile_id: str
) -> list[Identity]:
    """Identities a profile gained: Engage re-sends current values to them."""
    old = set(identities(before, exit=False, profile_id=profile_id))
    return [i for i in identities(after, exit=False, profile_id=profile_id) if i not in old]


def build(
    change: Change,
    identity: Identity,
    connection: Connection,
    *,
    space_id: str,
    change_id: str,
    now_ms: int,
) -> list[dict[str, Any]]:
    """The messages one destination gets for one change sent as one identity: an Identify
    and/or a Track, as the connection says. `change_id` names the change (a store sequence)."""
    messages = []
    if connection.send_identify:
        identify = _base("identify", change, identity, connection, space_id, change_id, now_ms)
        identify["traits"] = _identify_traits(change, identity)
        messages.append(identify)
    if connection.send_track:
        track = _base("track", change, identity, connection, space_id, change_id, now_ms)
        _add_track_fields(track, change, identity, connection)
        messages.append(track)
    return messages


def _base(
    kind: str,
    change: Change,
    identity: Identity,
    connection: Connection,
    space_id: str,
    change_id: str,
    now_ms: int,
) -> dict[str, Any]:
    message: dict[str, Any] = {"type": kind, "messageId": ""}
    if identity.user_id is not None:
        message["userId"] = identity.user_id
    if identity.anonymous_id is not None:
        message["anonymousId"] = identity.anonymous_id
    message["context"] = {"personas": personas(change.kind, change.key, space_id)}
    message["integrations"] = {"All": False, connection.destination: True}
    message["timestamp"] = format_ms(now_ms)
    seed = msgspec.json.encode(
        [change_id, kind, connection.destination, change.key, change.change, identity]
    )
    message["messageId"] = "engage-" + hashlib.blake2b(seed, digest_size=16).hexdigest()
    return message


def _identify_traits(change: Change, identity: Identity) -> dict[str, Any]:
    traits: dict[str, Any] = {change.key: change.value}
    if identity.email is not None:
        traits["email"] = identity.email
    return traits


def _add_track_fields(
    message: dict[str, Any], change: Change, identity: Identity, connection: Connection
) -> None:
    if change.kind == "audience":
        entered = change.change == "entered"
        event = connection.audience_entered_event if entered else connection.audience_exited_event
        properties = {"audience_key": change.key, change.key: change.value}
    else:
        event = connection.trait_computed_event
        properties = {"trait_key": change.key, change.key: change.value}
    message["event"] = event
    message["properties"] = properties
    if identity.email is not None:
        message["context"]["traits"] = {"email": identity.email}


def first_sync(kind: Kind, key: str, values: dict[str, Any]) -> dict[str, Change]:
    """The first sync of a definition to a destination, by profile: every member enters (no
    exits are sent); every profile with a value gets it."""
    changes = {}
    for profile_id, value in values.items():
        if kind == "audience" and value:
            changes[profile_id] = Change(key, kind, "entered", True, False)
        elif kind == "computed_trait" and value is not None:
            changes[profile_id] = Change(key, kind, "computed", value, None)
    return changes


def for_change(
    change: Change,
    identifiers: dict[str, list[str]],
    connections: list[Connection],
    *,
    profile_id: str,
    space_id: str,
    change_id: str,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Every message one recorded change sends: per connected destination, per identity
    (every combination for an exit), an Identify and/or a Track."""
    exit = change.change == "exited"
    people = identities(identifiers, exit=exit, profile_id=profile_id)
    return [
        message
        for connection in connections
        for identity in people
        for message in build(
            change, identity, connection, space_id=space_id, change_id=change_id, now_ms=now_ms
        )
    ]


def group(
    change: Change,
    group_id: str,
    connection: Connection,
    *,
    space_id: str,
    change_id: str,
    now_ms: int,
) -> dict[str, Any]:
    """The Group call an account's change sends: the membership as an account trait. It
    names no user: it is about the account alone."""
    message: dict[str, Any] = {"type": "group", "messageId": "", "groupId": group_id}
    message["traits"] = {change.key: change.value}
    message["context"] = {"personas": personas(change.kind, change.key, space_id)}
    message["integrations"] = {"All": False, connection.destination: True}
    message["timestamp"] = format_ms(now_ms)
    seed = msgspec.json.encode(
        [change_id, "group", connection.destination, change.key, change.change, group_id]
    )
    message["messageId"] = "engage-" + hashlib.blake2b(seed, digest_size=16).hexdigest()
    return message


def for_account_change(
    change: Change,
    group_id: str,
    members: tuple[tuple[str, dict[str, list[str]]], ...],
    connections: list[Connection],
    *,
    space_id: str,
    change_id: str,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Every message an account's recorded change sends: per connected destination, a Group
    call (`send_group`), and to each user of the account the Identify and/or Track a user's
    own change would send (one per identity, every combination for an exit)."""
    result = []
    for connection in connections:
        if connection.send_group:
            result.append(
                group(
                    change,
                    group_id,
                    connection,
                    space_id=space_id,
                    change_id=change_id,
                    now_ms=now_ms,
                )
            )
        for profile_id, identifiers in members:
            result += for_change(
                change,
                identifiers,
                [connection],
                profile_id=profile_id,
                space_id=space_id,
                change_id=change_id,
                now_ms=now_ms,
            )
    return result
