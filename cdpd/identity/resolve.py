"""Segment's resolution rules as a pure function: (graph, message) -> Resolution.

Per message and per collection (users, accounts), with the message's identifiers sorted most
important first (`Rules.rank`):

1. Find the profiles that own any of the identifiers.
2. If attaching the new identifiers to them, and merging them into one, would break a limit,
   demote (drop) the lowest-priority identifier of the message and go back to 1. A limit is
   broken when, for some type, the profile-to-be holds more values first seen within the
   type's window than its limit allows *and* more than any of the matched profiles already
   held (so rules tightened later do not stop existing profiles from receiving events), or when
   it would pass the hard limits (100 merges, 1,000 identifiers), or an identifier split off by
   an unmerge would join another profile's identifiers (by a merge, or by being attached).
3. No profile: create one (its id derived from the message). One: attach. Several: merge them
   into the oldest (lowest creating seq) and attach.

This is Segment's demotion algorithm ("drop the lowest-priority identifier and retry the
lookup"), which is also what stops a shared `anonymous_id` or `team@company.com` from fusing two
`user_id`s into a blob user. Suppressed users (a regulation's) get no profile: a message of one
resolves to nothing, and an identifier naming one in another's message is left out unrecorded.
Traits of identify (users) and group (accounts) calls are set on the resolved profile, `null`
removing one. Alias carries no identifier of its own beyond
`userId`/`anonymousId` (`previousId` is not read): alias never merges profiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from cdpd.identity.graph import Graph, Outcome, Profile, Resolution, profile_id
from cdpd.identity.identifiers import Collection, Extracted, Identifier, Rules, extract

MAX_MERGES = 100
MAX_IDENTIFIERS = 1000
TRAIT_TYPES = {"users": "identify", "accounts": "group"}


def resolve(
    graph: Graph,
    payload: Mapping[str, Any],
    rules: Rules,
    *,
    seq: int,
    message_id: str,
    source: str,
    at_ms: int,
    suppressed: Set[str] = frozenset(),
) -> Resolution:
    """What `payload` (stored at `seq`, received at `at_ms`) does to `graph`; the graph is
    not changed (apply the result with `graph.apply`). `suppressed`: the user ids that must
    not reach a profile."""
    found = _without(extract(payload, rules), payload, suppressed)
    kind = str(payload.get("type", ""))
    traits = payload.get("traits")
    outcomes: dict[str, Outcome | None] = {}
    collections: tuple[tuple[Collection, list[Identifier]], ...] = (
        ("users", found.users),
        ("accounts", found.accounts),
    )
    for collection, identifiers in collections:
        own_traits = traits if kind == TRAIT_TYPES[collection] and isinstance(traits, dict) else {}
        outcomes[collection] = _resolve_in(
            graph, collection, identifiers, own_traits, rules, seq=seq, at_ms=at_ms
        )
    return Resolution(
        seq=seq,
        message_id=message_id,
        source=source,
        type=kind,
        at_ms=at_ms,
        user=outcomes["users"],
        account=outcomes["accounts"],
        blocked=tuple(found.blocked),
    )


def _without(found: Extracted, payload: Mapping[str, Any], suppressed: Set[str]) -> Extracted:
    """`found` without the identifiers whose value is a suppressed user id (any type: an
    external id, an account named after them); nothing at all for a suppressed user's message.
    Not recorded as blocked: a record would hold the id."""
    if not suppressed:
        return found
    user_id = payload.get("userId")
    if user_id is not None and str(user_id) in suppressed:
        return Extracted(users=[], accounts=[], blocked=[])
    return Extracted(
        users=[i for i in found.users if i[1] not in suppressed],
        accounts=[i for i in found.accounts if i[1] not in suppressed],
        blocked=[b for b in found.blocked if b[1][1] not in suppressed],
    )


def _resolve_in(
    graph: Graph,
    collection: Collection,
    identifiers: list[Identifier],
    traits: Mapping[str, Any],
    rules: Rules,
    *,
    seq: int,
    at_ms: int,
) -> Outcome | None:
    if not identifiers:
        return None
    owners = {graph.owner(collection, c) for c in identifiers}
    if len(owners) == 1 and None not in owners:  # the common case: a known profile, as is
        return Outcome(collection, owners.pop() or "", False, (), (), (), dict(traits))
    candidates = sorted(identifiers, key=rules.rank)
    demoted: list[Identifier] = []
    while candidates:
        matched = _matched(graph, collection, candidates)
        if not _breaks_limits(graph, collection, matched, candidates, rules, at_ms):
            break
        demoted.append(candidates.pop())
    if not candidates:
        return None
    if matched:
        target, *merged = matched
        created = False
    else:
        target, merged, created = profile_id(collection, seq, candidates[0]), [], True
    return Outcome(
        collection=collection,
        profile_id=target,
        created=created,
        merged=tuple(merged),
        attached=tuple(c for c in candidates if graph.owner(collection, c) is None),
        demoted=tuple(demoted),
        traits=dict(traits),
    )


def _matched(graph: Graph, collection: str, candidates: list[Identifier]) -> list[str]:
    """The canonical profiles owning any candidate, oldest first."""
    owners = {graph.owner(collection, c) for c in candidates} - {None}
    profiles = [graph.profiles[p] for p in owners if p is not None]
    return [p.id for p in sorted(profiles, key=lambda p: (p.created_seq, p.id))]


def _joins_separated(
    graph: Graph, collection: str, profiles: list[Profile], new: list[Identifier]
) -> bool:
    """Whether a split-off identifier would join identifiers of another profile: by a merge of
    the profile holding it, or by being attached to an existing profile."""
    if len(profiles) > 1:
        held = (i for p in profiles for i in p.identifiers)
        if any((collection, i) in graph.separated for i in held):
            return True
    return bool(profiles) and any((collection, i) in graph.separated for i in new)


def _breaks_limits(
    graph: Graph,
    collection: str,
    matched: list[str],
    candidates: list[Identifier],
    rules: Rules,
    at_ms: int,
) -> bool:
    profiles = [graph.profiles[p] for p in matched]
    new = [c for c in candidates if graph.owner(collection, c) is None]
    if not new and len(profiles) <= 1:
        return False  # nothing changes on the profile
    if len(profiles) > 1 and sum(p.merges for p in profiles) + len(profiles) - 1 > MAX_MERGES:
        return True
    if graph.separated and _joins_separated(graph, collection, profiles, new):
        return True
    total = sum(len(p.identifiers) for p in profiles) + len(new)
    if total > MAX_IDENTIFIERS and total > max((len(p.identifiers) for p in profiles), default=0):
        return True
    kinds = {t for t, _ in new}
    if len(profiles) > 1:  # a merge: every type of every profile counts
        kinds.update(t for p in profiles for t, _ in p.identifiers)
    for kind in kinds:  # (one profile: only the new identifiers' types can grow)
        rule = rules[kind]
        since = None if rule.window_ms is None else at_ms - rule.window_ms
        held = [p.count(kind, since) for p in profiles]
        combined = sum(held) + sum(1 for t, _ in new if t == kind)
        if combined > rule.limit and combined > max(held, default=0):
            return True
    return False
