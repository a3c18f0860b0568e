"""The identity graph in memory: profiles, which profile owns each identifier, traits, links.

The graph is the state the resolution rules read (`cdpd.identity.resolve`); applying a
`Resolution` to it is the only way it changes, so the store can persist exactly what changed and
a graph loaded back from the store is the same graph. Merged profiles stay, pointing at the
profile they were merged into, so an old `segment_id` still finds its canonical profile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import msgspec

from cdpd.identity.identifiers import Collection, Identifier

ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_CHARS = 27
PREFIXES = {"users": "use_", "accounts": "acc_"}
_BASE62 = bytes(ord(ID_ALPHABET[byte % 62]) for byte in range(256))  # byte -> character


def profile_id(collection: str, seq: int, first: Identifier) -> str:
    """A persistent id in Segment's shape (`use_` + 27 base62 characters), derived from the
    message that created the profile, so that resolving the same messages again (a replay, an
    unmerge, a restart) gives the same ids."""
    key = f"{collection}\0{seq}\0{first[0]}\0{first[1]}".encode()
    digest = hashlib.blake2b(key, digest_size=ID_CHARS).digest()
    return PREFIXES[collection] + digest.translate(_BASE62).decode()


class Seen(msgspec.Struct, frozen=True, gc=False):
    """When and where an identifier was first seen on its profile. (Seen and Trait hold no
    cycles, so the garbage collector need not walk the graph's hundreds of thousands of them.)"""

    at_ms: int
    seq: int
    message_id: str
    source: str


class Trait(msgspec.Struct, frozen=True, gc=False):
    """A trait's latest value (None: removed by a `null`, kept so an older value from a merged
    profile cannot come back) and where it came from."""

    value: Any
    source: str
    updated_ms: int
    seq: int

    @property
    def precedence(self) -> tuple[int, int]:
        return (self.updated_ms, self.seq)


class Profile(msgspec.Struct):
    id: str
    collection: Collection
    created_ms: int
    created_seq: int
    first_message_id: str
    first_source: str
    updated_ms: int
    last_message_id: str
    last_source: str
    merges: int = 0
    merged_into: str | None = None
    identifiers: dict[Identifier, Seen] = msgspec.field(default_factory=dict)
    traits: dict[str, Trait] = msgspec.field(default_factory=dict)
    links: set[str] = msgspec.field(default_factory=set)

    def count(self, kind: str, since_ms: int | None) -> int:
        return sum(
            1
            for (t, _), seen in self.identifiers.items()
            if t == kind and (since_ms is None or seen.at_ms >= since_ms)
        )


class Outcome(msgspec.Struct, frozen=True):
    """What resolving one message did in one collection."""

    collection: Collection
    profile_id: str
    created: bool
    merged: tuple[str, ...]  # profiles merged into profile_id, in the order they were merged
    attached: tuple[Identifier, ...]  # identifiers new to the profile
    demoted: tuple[Identifier, ...]  # dropped to keep a limit (lowest priority first dropped)
    traits: dict[str, Any]  # set, or removed when None


class Resolution(msgspec.Struct, frozen=True):
    """Everything one message changed: its users and accounts outcomes, the link between them,
    and the values not promoted because they are blocked."""

    seq: int
    message_id: str
    source: str
    type: str
    at_ms: int
    user: Outcome | None
    account: Outcome | None
    blocked: tuple[tuple[str, Identifier], ...] = ()


class Graph:
    """Profiles by id and the owner of each identifier, per collection."""

    def __init__(self) -> None:
        self.profiles: dict[str, Profile] = {}
        self.owners: dict[tuple[str, Identifier], str] = {}
        self.live = {"users": 0, "accounts": 0}  # profiles not merged into another
        # Identifiers split off by an unmerge: their profile never merges with another again.
        self.separated: set[tuple[str, Identifier]] = set()

    def add(self, profile: Profile) -> None:
        self.profiles[profile.id] = profile
        if profile.merged_into is None:
            self.live[profile.collection] += 1

    def canonical(self, pid: str) -> str:
        while (into := self.profiles[pid].merged_into) is not None:
            pid = into
        return pid

    def owner(self, collection: str, identifier: Identifier) -> str | None:
        return self.owners.get((collection, identifier))

    def find(self, collection: str, identifier: Identifier) -> Profile | None:
        pid = self.owner(collection, identifier)
        return None if pid is None else self.profiles[pid]

    def apply(self, resolution: Resolution) -> None:
        for outcome in (resolution.user, resolution.account):
            if outcome is not None:
                self._apply(resolution, outcome)
        if resolution.user is not None and resolution.account is not None:
            self.profiles[resolution.user.profile_id].links.add(resolution.account.profile_id)
            self.profiles[resolution.account.profile_id].links.add(resolution.user.profile_id)

    def _apply(self, resolution: Resolution, outcome: Outcome) -> None:
        at_ms, seq = resolution.at_ms, resolution.seq
        if outcome.created:
            self.add(
                Profile(
                    id=outcome.profile_id,
                    collection=outcome.collection,
                    created_ms=at_ms,
                    created_seq=seq,
                    first_message_id=resolution.message_id,
                    first_source=resolution.source,
                    updated_ms=at_ms,
                    last_message_id=resolution.message_id,
                    last_source=resolution.source,
                )
            )
        target = self.profiles[outcome.profile_id]
        for merged in outcome.merged:
            self._merge(self.profiles[merged], target)
        seen = Seen(at_ms, seq, resolution.message_id, resolution.source)
        for identifier in outcome.attached:
            target.identifiers[identifier] = seen
            self.owners[(outcome.collection, identifier)] = target.id
        for name, value in outcome.traits.items():
            trait = Trait(value, resolution.source, at_ms, seq)
            mine = target.traits.get(name)
            if mine is None or trait.precedence >= mine.precedence:  # (a replay is older)
                target.traits[name] = trait
        target.updated_ms = max(target.updated_ms, at_ms)
        target.last_message_id = resolution.message_id
        target.last_source = resolution.source

    def _merge(self, source: Profile, target: Profile) -> None:
        for identifier, seen in source.identifiers.items():
            target.identifiers[identifier] = seen
            self.owners[(source.collection, identifier)] = target.id
        for name, trait in source.traits.items():
            mine = target.traits.get(name)
            if mine is None or trait.precedence > mine.precedence:
                target.traits[name] = trait
        for linked in source.links:
            other = self.profiles[linked]
            other.links.discard(source.id)
            other.links.add(target.id)
            target.links.add(linked)
        target.merges += source.merges + 1
        source.identifiers, source.traits, source.links = {}, {}, set()
        source.merged_into = target.id
        self.live[source.collection] -= 1

    def remove(self, pid: str) -> list[str]:
        """Forget a canonical profile and every profile merged into it; returns their ids."""
        return self.remove_all([pid])

    def remove_all(self, pids: Iterable[str]) -> list[str]:
        """`remove` for many canonical profiles, with one pass over the graph."""
        wanted = set(pids)
        gone = [p for p in self.profiles if self.canonical(p) in wanted]
        for pid in wanted:
            self._drop_canonical(pid)
        for p in gone:
            del self.profiles[p]
        return gone

    def _drop_canonical(self, pid: str) -> None:
        profile = self.profiles[pid]
        for identifier in profile.identifiers:
            self.owners.pop((profile.collection, identifier), None)
        for linked in profile.links:
            self.profiles[linked].links.discard(pid)
        self.live[profile.collection] -= 1

    def drop_identifier(self, pid: str, collection: str, identifier: Identifier) -> None:
        self.profiles[pid].identifiers.pop(identifier, None)
        self.owners.pop((collection, identifier), None)
