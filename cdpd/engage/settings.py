"""The Engage sections of the config: `[engage]`, `[[audiences]]` and `[[computed_traits]]`,
and the checks `cdpd check-config` runs on them (every query compiled, errors pointing at the
character; keys snake_case and unique; destinations that exist)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from cdpd.engage import catalog
from cdpd.settings import Section

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


class EngageConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # The space's id, as in `context.personas.space_id` (namespace `spa_<space_id>`).
    space_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "default"
    # Engage's own SQLite file; default <data_dir>/engage.sqlite3.
    path: str | None = None


class AudienceDestination(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    # Identify / Track per user (for an account audience: per user linked to the account).
    send_identify: bool = True
    send_track: bool = False
    # Account audiences only: a Group call per account.
    send_group: bool = False
    audience_entered_event: Annotated[str, msgspec.Meta(min_length=1)] = "Audience Entered"
    audience_exited_event: Annotated[str, msgspec.Meta(min_length=1)] = "Audience Exited"


class TraitDestination(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    send_identify: bool = True
    send_track: bool = False
    trait_computed_event: Annotated[str, msgspec.Meta(min_length=1)] = "Trait Computed"


class AudienceConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    key: Key
    query: str
    include_anonymous: bool = False
    # true: computed over past events too; false: only events from the audience's creation on.
    historical: bool = True
    destinations: list[AudienceDestination] = msgspec.field(default_factory=list)


class ComputedTraitConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    key: Key
    query: str
    include_anonymous: bool = True
    historical: bool = True
    destinations: list[TraitDestination] = msgspec.field(default_factory=list)


def definition_sources(
    audiences: list[AudienceConfig],
    computed_traits: list[ComputedTraitConfig],
    created_ms: dict[str, int] | None = None,
) -> list[catalog.Source]:
    """The definitions to compile; a definition without history counts events from its
    creation time (`created_ms`, kept by the store; unknown yet: counts from now on)."""
    created = created_ms or {}
    sources = []
    for where, item in _numbered(audiences, computed_traits):
        kind: catalog.Kind = "audience" if where.startswith("audiences") else "computed_trait"
        since = None if item.historical else created.get(item.key, 2**62)
        sources.append(
            catalog.Source(
                key=item.key,
                kind=kind,
                query=item.query,
                include_anonymous=item.include_anonymous,
                since_ms=since,
            )
        )
    return sources


def check(
    audiences: list[AudienceConfig],
    computed_traits: list[ComputedTraitConfig],
    destination_names: set[str],
) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    where_of: dict[str, str] = {}
    for where, item in _numbered(audiences, computed_traits):
        where_of.setdefault(item.key, where)
        if not _SNAKE_CASE.fullmatch(item.key):
            problems.append(f"{where}.key: {item.key!r} is not snake_case (like order_count)")
        if item.key in seen:
            problems.append(f"{where}.key: {item.key!r} is already used by {seen[item.key]}")
        seen.setdefault(item.key, where)
        connected: list[AudienceDestination | TraitDestination] = [*item.destinations]
        for d_index, destination in enumerate(connected):
            if destination.name not in destination_names:
                known = ", ".join(sorted(destination_names)) or "none"
                problems.append(
                    f"{where}.destinations[{d_index}].name: no destination is named "
                    f"{destination.name!r} (known: {known})"
                )
    if problems:
        return problems
    compiled: list[catalog.Source] = []
    for source in definition_sources(audiences, computed_traits):
        try:
            definition = catalog.compile_definition(source)
        except catalog.DefinitionError as exc:
            detail = str(exc).removeprefix(f"{source.key}: ")
            problems.append(f"{where_of[source.key]}.query: {detail}")
        else:
            compiled.append(source)
            if not definition.plan.account:
                problems += _group_sends(where_of[source.key], audiences, source.key)
    if problems:
        return problems
    try:
        catalog.build(compiled)
    except catalog.DefinitionError as exc:
        problems.append(f"{where_of[exc.key]}.query: {str(exc).removeprefix(exc.key + ': ')}")
    return problems


def _group_sends(where: str, audiences: list[AudienceConfig], key: str) -> list[str]:
    """`send_group` needs an account audience: a user has no account to send."""
    return [
        f"{where}.destinations[{index}].send_group: only an account audience (ANY or ALL) "
        "sends Group calls"
        for audience in audiences
        if audience.key == key
        for index, destination in enumerate(audience.destinations)
        if destination.send_group
    ]


def _numbered(
    audiences: list[AudienceConfig], computed_traits: list[ComputedTraitConfig]
) -> list[tuple[str, AudienceConfig | ComputedTraitConfig]]:
    """Each definition with where it is in the config (`audiences[0]`)."""
    numbered: list[tuple[str, AudienceConfig | ComputedTraitConfig]] = [
        (f"audiences[{index}]", item) for index, item in enumerate(audiences)
    ]
    numbered += [(f"computed_traits[{index}]", item) for index, item in enumerate(computed_traits)]
    return numbered
