"""The `[privacy]` config section: matchers, per-source blocking, per-destination and
per-warehouse controls by class, and the salt for hashing."""

from __future__ import annotations

import os
from typing import Annotated, Literal

import msgspec

from cdpd.settings import Section

DataClass = Literal["red", "yellow", "green"]
Action = Literal["allow", "block", "hash"]
MatchKind = Literal[
    "exact", "similar", "regex", "email", "phone", "card_number", "ip_address", "national_id"
]
VALUE_KINDS = frozenset({"email", "phone", "card_number", "ip_address", "national_id"})
KEY_KINDS = frozenset({"exact", "similar", "regex"})
MAX_MATCHERS = 100  # Segment's limit per workspace


class MatcherConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A custom matcher. On `key`: the field's name equals (`exact`), resembles (`similar`,
    Sørensen-Dice over 0.7) or matches the regex `pattern`; `synonyms` are other names it
    goes by. On `value`: a regex `pattern`, or a built-in detector (`email`, `phone`,
    `card_number` with a Luhn check, `ip_address`, `national_id`). A matcher with the name
    of a default matcher replaces it."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    class_: DataClass = msgspec.field(name="class")
    on: Literal["key", "value"] = "key"
    match: MatchKind = "exact"
    pattern: str | None = None
    synonyms: list[Annotated[str, msgspec.Meta(min_length=1)]] = msgspec.field(default_factory=list)


class SourceControls(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Segment's standard control: fields of these classes (in the inventory) are removed
    from the source's messages before they are stored."""

    block: list[DataClass] = msgspec.field(default_factory=list)


class ClassActions(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a destination or warehouse receives of the fields of each class."""

    red: Action = "allow"
    yellow: Action = "allow"
    green: Action = "allow"

    def by_class(self) -> dict[str, str]:
        return {"red": self.red, "yellow": self.yellow, "green": self.green}


class PrivacyConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Match every new field against the matchers and record it in the inbox.
    detect: bool = True
    default_matchers: bool = True
    matchers: list[MatcherConfig] = msgspec.field(default_factory=list)
    sources: dict[str, SourceControls] = msgspec.field(default_factory=dict)
    destinations: dict[str, ClassActions] = msgspec.field(default_factory=dict)
    warehouses: dict[str, ClassActions] = msgspec.field(default_factory=dict)
    # Prepended to a value before it is hashed (SHA-256); given here or by an environment
    # variable's name. None: unsalted, as Segment hashed.
    salt: str | None = None
    salt_env: str | None = None

    def resolved_salt(self) -> str:
        if self.salt:
            return self.salt
        if self.salt_env:
            return os.environ.get(self.salt_env, "")
        return ""


def check(
    privacy: PrivacyConfig, sources: set[str], destinations: set[str], warehouses: set[str]
) -> list[str]:
    """What is wrong with the section, as `privacy.key: problem` texts."""
    from cdpd.privacy.matchers import compile_pattern  # pure; imported late like config's

    problems = []
    if len(privacy.matchers) > MAX_MATCHERS:
        problems.append(f"privacy.matchers: at most {MAX_MATCHERS} custom matchers")
    for index, matcher in enumerate(privacy.matchers):
        where = f"privacy.matchers[{index}]"
        kinds = KEY_KINDS if matcher.on == "key" else VALUE_KINDS | {"regex"}
        if matcher.match not in kinds:
            problems.append(
                f"{where}.match: {matcher.match!r} does not match on {matcher.on} "
                f"(expected one of: {', '.join(sorted(kinds))})"
            )
        if matcher.match == "regex":
            if matcher.pattern is None:
                problems.append(f"{where}.pattern: a regex matcher needs a pattern")
            else:
                problem = compile_pattern(matcher.pattern)[1]
                if problem:
                    problems.append(f"{where}.pattern: {problem}")
        elif matcher.pattern is not None:
            problems.append(f"{where}.pattern: only a regex matcher takes a pattern")
    for key, names, known in (
        ("sources", privacy.sources, sources),
        ("destinations", privacy.destinations, destinations),
        ("warehouses", privacy.warehouses, warehouses),
    ):
        for name in names:
            if name not in known:
                problems.append(
                    f"privacy.{key}.{name}: no {key[:-1]} is named {name!r} "
                    f"(known: {', '.join(sorted(known)) or 'none'})"
                )
    return problems
