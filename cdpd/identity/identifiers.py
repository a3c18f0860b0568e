"""Which identifiers a message carries, and the settings that govern each type.

Segment's defaults (`identity-resolution-onboarding.md`, `externalids.md`): `user_id` from
`userId`, `anonymous_id` from `anonymousId`, `email` from `traits.email` or
`context.traits.email`, device ids, advertising ids and push tokens from `context.device`,
`ga_client_id` from the Google Analytics integration options, `group_id` from a group call's
`groupId` (the `accounts` collection), custom types from a configured trait or property key,
and anything in `context.externalIds`. Blocked values stay in the payload but never become
identifiers. Pure functions only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from cdpd.config import IdentityConfig

Collection = Literal["users", "accounts"]
Window = Literal["ever", "weekly", "monthly", "annually"]
Identifier = tuple[str, str]  # (type, value)

WINDOW_MS: dict[str, int | None] = {
    "ever": None,
    "weekly": 7 * 86_400_000,
    "monthly": 30 * 86_400_000,
    "annually": 365 * 86_400_000,
}
DEFAULT_PRIORITIES = {"user_id": 1, "email": 2}
UNPINNED_PRIORITY = 3  # every other type ranks here, alphabetically
SUGGESTED_BLOCKED_VALUES = ("-1", "null", "anonymous")
SUGGESTED_BLOCKED_PATTERNS = (r"^[0-]*$",)
MAX_GROUP_ID_CHARS = 500
MAX_VALUE_CHARS = 1000
DEVICE_TYPES = ("ios", "android")


class TypeRule(msgspec.Struct, frozen=True):
    """The settings in force for one identifier type."""

    type: str
    limit: int
    window: Window
    priority: int
    pinned: bool
    blocked_values: frozenset[str]
    blocked_patterns: tuple[re.Pattern[str], ...]
    key: str | None = None
    collection: Collection = "users"
    keys: tuple[str, ...] = ()  # `key` as given, in snake_case and in camelCase

    @property
    def window_ms(self) -> int | None:
        return WINDOW_MS[self.window]

    def blocks(self, value: str) -> bool:
        if value in self.blocked_values:
            return True
        return any(p.search(value) for p in self.blocked_patterns)

    @property
    def rank(self) -> tuple[int, str]:
        """Sort key, most important first: pinned priorities, then the alphabetical tail."""
        return (self.priority if self.pinned else UNPINNED_PRIORITY, self.type)


def default_limit(kind: str) -> tuple[int, Window]:
    if kind == "user_id":
        return 1, "ever"
    if kind == "anonymous_id":
        return 5, "weekly"
    return 5, "ever"


class Rules:
    """Every type's rule: configured ones, and defaults for any type seen in traffic."""

    def __init__(self, config: IdentityConfig | None = None) -> None:
        self._rules: dict[str, TypeRule] = {}
        self.custom_keys: list[TypeRule] = []
        for settings in config.identifiers if config else ():
            limit, window = default_limit(settings.type)
            pinned = settings.priority or DEFAULT_PRIORITIES.get(settings.type)
            suggested = settings.block_suggested
            rule = TypeRule(
                type=settings.type,
                limit=settings.limit or limit,
                window=settings.window or window,
                priority=pinned or UNPINNED_PRIORITY,
                pinned=pinned is not None,
                blocked_values=frozenset(settings.blocked_values)
                | frozenset(SUGGESTED_BLOCKED_VALUES if suggested else ()),
                blocked_patterns=_compile(
                    [*settings.blocked_patterns, *(SUGGESTED_BLOCKED_PATTERNS if suggested else ())]
                ),
                key=settings.key,
                collection=settings.collection,
                keys=_spellings(settings.key) if settings.key else (),
            )
            self._rules[settings.type] = rule
            if settings.key is not None:
                self.custom_keys.append(rule)

    def __getitem__(self, kind: str) -> TypeRule:
        rule = self._rules.get(kind)
        if rule is None:
            rule = self._rules[kind] = _default_rule(kind)
        return rule

    def rank(self, identifier: Identifier) -> tuple[int, str, str]:
        return (*self[identifier[0]].rank, identifier[1])


def _default_rule(kind: str) -> TypeRule:
    limit, window = default_limit(kind)
    pinned = DEFAULT_PRIORITIES.get(kind)
    return TypeRule(
        type=kind,
        limit=limit,
        window=window,
        priority=pinned or UNPINNED_PRIORITY,
        pinned=pinned is not None,
        blocked_values=frozenset(SUGGESTED_BLOCKED_VALUES),
        blocked_patterns=_compile(list(SUGGESTED_BLOCKED_PATTERNS)),
        collection="accounts" if kind == "group_id" else "users",
    )


def _spellings(key: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((key, _snake(key), _camel(key))))


def _compile(patterns: list[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in dict.fromkeys(patterns))


def check(config: IdentityConfig) -> list[str]:
    """Problems in `[identity]` that its types cannot express: bad regexes, tokens missing."""
    problems = []
    for index, settings in enumerate(config.identifiers):
        for pattern in settings.blocked_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(
                    f"identifiers[{index}].blocked_patterns: {pattern!r} is not a regex: {exc}"
                )
        if settings.type == "group_id" and settings.collection != "accounts":
            problems.append(f"identifiers[{index}].collection: group_id is an accounts identifier")
    if not config.access_tokens and not config.access_tokens_env:
        problems.append("access_tokens: give at least one Profile API token (or access_tokens_env)")
    return problems


class Extracted(msgspec.Struct, frozen=True):
    """The identifiers of one message, per collection, and the values refused as blocked."""

    users: list[Identifier]
    accounts: list[Identifier]
    blocked: list[tuple[str, Identifier]]  # (collection, identifier)


def extract(payload: Mapping[str, Any], rules: Rules) -> Extracted:
    """Every identifier `payload` carries, in first-seen order without repeats."""
    found: dict[tuple[str, Identifier], None] = {}
    blocked: dict[tuple[str, Identifier], None] = {}
    for collection, kind, raw in _candidates(payload, rules):
        value = _as_value(raw)
        if value is None or (kind == "group_id" and len(value) > MAX_GROUP_ID_CHARS):
            continue
        key = (collection, (kind, value))
        if rules[kind].blocks(value):
            blocked[key] = None
        else:
            found[key] = None
    users: list[Identifier] = []
    accounts: list[Identifier] = []
    for collection, identifier in found:
        (users if collection == "users" else accounts).append(identifier)
    return Extracted(users=users, accounts=accounts, blocked=list(blocked))


_NONE: Mapping[str, Any] = {}


def _candidates(payload: Mapping[str, Any], rules: Rules) -> list[tuple[str, str, Any]]:
    """(collection, type, raw value) for every place an identifier may be; runs for every
    message, so the common places are read directly and absent values skipped at once."""
    found = []
    get = payload.get
    if (user_id := get("userId")) is not None:
        found.append(("users", "user_id", user_id))
    if (anonymous_id := get("anonymousId")) is not None:
        found.append(("users", "anonymous_id", anonymous_id))
    kind = get("type")
    traits = _object(get("traits"))
    context = _object(get("context"))
    context_traits = _object(context.get("traits"))
    if kind == "group":
        found.append(("accounts", "group_id", get("groupId")))
    elif (email := traits.get("email")) is not None:
        found.append(("users", "email", email))
    if (email := context_traits.get("email")) is not None:
        found.append(("users", "email", email))
    device = context.get("device")
    if device:
        found += _device_ids(_object(device))
    integrations = get("integrations") or context.get("integrations")
    if integrations:
        google = _object(_object(integrations).get("Google Analytics"))
        if (client_id := google.get("clientId")) is not None:
            found.append(("users", "ga_client_id", client_id))
    if rules.custom_keys:
        bags = (
            traits if kind in ("identify", "group") else _object(get("properties")),
            context_traits,
        )
        for rule in rules.custom_keys:
            found += [
                (rule.collection, rule.type, bag[key])
                for key in rule.keys
                for bag in bags
                if key in bag
            ]
    external = context.get("externalIds")
    if isinstance(external, list):
        for item in external:
            found += _external_id(item)
    return found


def _device_ids(device: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    platform = device.get("type")
    if platform not in DEVICE_TYPES:
        return []
    found = [
        ("users", f"{platform}.id", device.get("id")),
        ("users", f"{platform}.push_token", device.get("token")),
    ]
    if device.get("adTrackingEnabled") is True:
        found.append(("users", f"{platform}.idfa", device.get("advertisingId")))
    return found


def _external_id(item: Any) -> list[tuple[str, str, Any]]:
    """`{id, type, collection, encoding}`: all four are required, as Segment requires."""
    if not isinstance(item, dict) or not all(
        isinstance(item.get(k), str) for k in ("id", "type", "collection", "encoding")
    ):
        return []
    kind = item["type"].lower()
    if item["collection"] in ("users", "accounts") and re.fullmatch(r"[a-z0-9_.]{1,100}", kind):
        return [(item["collection"], kind, item["id"])]
    return []


def _as_value(raw: Any) -> str | None:
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int | float):
        raw = str(raw)
    if not isinstance(raw, str) or not raw or len(raw) > MAX_VALUE_CHARS:
        return None
    return raw


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)
