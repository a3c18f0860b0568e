"""A profile's Engage state and the pure operations on it: `apply` one message, `merge` two
profiles. The state holds traits, identifiers, account links and one set of hour buckets per
stream the catalog keeps (see plan.py); never the raw events.

Messages feed streams as Segment's audiences see them: a Track by its event name, a Page as
`Page Viewed` and a Screen as `Screen Viewed` (their `name` also as the properties `name` and
`page_name` / `screen_name`). An Identify sets traits (null removes one); a Group links the
profile to an account. Identifiers are recorded for gating and for the messages sent out.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cdpd.engage.evaluation import TOTAL_BUCKET, Ctx, Stream
from cdpd.engage.reducers import add, combine
from cdpd.engage.values import lookup, moment_ms

MAX_VALUES_PER_IDENTIFIER = 100
HOUR_MS = 3_600_000


class ProfileState(msgspec.Struct, kw_only=True):
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    trait_times_ms: dict[str, int] = msgspec.field(default_factory=dict)
    identifiers: dict[str, list[str]] = msgspec.field(default_factory=dict)
    groups: list[str] = msgspec.field(default_factory=list)
    streams: dict[str, dict[int, Any]] = msgspec.field(default_factory=dict)
    values: dict[str, Any] = msgspec.field(default_factory=dict)  # last evaluated, by key


class AccountState(msgspec.Struct, kw_only=True):
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    trait_times_ms: dict[str, int] = msgspec.field(default_factory=dict)
    streams: dict[str, dict[int, Any]] = msgspec.field(default_factory=dict)  # always empty
    values: dict[str, Any] = msgspec.field(default_factory=dict)


def event_of(message: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The event name a message counts as, and the properties its conditions read."""
    kind = message.get("type")
    properties = message.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    if kind == "track":
        event = message.get("event")
        return (event if isinstance(event, str) else None), properties
    if kind in ("page", "screen"):
        name = message.get("name")
        if name is not None:
            properties = {"name": name, f"{kind}_name": name, **properties}
        return ("Page Viewed" if kind == "page" else "Screen Viewed"), properties
    return None, properties


def timestamp_ms(message: dict[str, Any], now_ms: int) -> int:
    for key in ("timestamp", "originalTimestamp", "receivedAt"):
        moment = moment_ms(message.get(key))
        if moment is not None:
            return moment
    return now_ms


def apply(
    state: ProfileState,
    message: dict[str, Any],
    streams: dict[str, tuple[Stream, ...]],
    now_ms: int,
    *,
    source: str = "",
) -> ProfileState:
    """The state after one message of this profile (changed in place and returned).
    `streams` are the catalog's streams by event name."""
    at_ms = timestamp_ms(message, now_ms)
    _record_identifiers(state, message)
    kind = message.get("type")
    if kind == "identify":
        set_traits(state, message.get("traits"), at_ms)
    elif kind == "group":
        group_id = message.get("groupId")
        if isinstance(group_id, str | int) and str(group_id) and str(group_id) not in state.groups:
            state.groups.append(str(group_id))
    event, properties = event_of(message)
    if event is None:
        return state
    context = message.get("context")
    ctx = Ctx(
        state, now_ms, properties=properties, context=context if isinstance(context, dict) else {}
    )
    for stream in streams.get(event, ()):
        _feed(state, stream, ctx, at_ms, source)
    return state


def _feed(state: ProfileState, stream: Stream, ctx: Ctx, at_ms: int, source: str) -> None:
    spec = stream.spec
    if at_ms < 0 or (spec.since_ms is not None and at_ms < spec.since_ms):
        return  # Segment ingests no event before 1970
    if source in spec.exclude_sources or (
        spec.include_sources and source not in spec.include_sources
    ):
        return
    if stream.matches is not None and not stream.matches(ctx):
        return
    hour = at_ms // HOUR_MS if spec.hourly else TOTAL_BUCKET
    horizon = stream.horizon_hours
    if spec.hourly and horizon is not None and ctx.now_hour - hour >= horizon:
        return  # already older than any window that reads this stream
    value = lookup(ctx.properties, spec.reducer.path) if spec.reducer.path else None
    buckets = state.streams.setdefault(spec.id, {})
    buckets[hour] = add(spec.reducer, buckets.get(hour), value, at_ms)
    if spec.hourly and horizon is not None:
        for old in [h for h in buckets if ctx.now_hour - h >= horizon]:
            del buckets[old]


def set_traits(state: ProfileState | AccountState, traits: Any, at_ms: int) -> None:
    if not isinstance(traits, dict):
        return
    for key, value in traits.items():
        if at_ms < state.trait_times_ms.get(key, -(2**62)):
            continue  # an older message does not overwrite a newer value
        if value is None:
            state.traits.pop(key, None)
        else:
            state.traits[key] = value
        state.trait_times_ms[key] = at_ms


def _record_identifiers(state: ProfileState, message: dict[str, Any]) -> None:
    context = message.get("context") if isinstance(message.get("context"), dict) else {}
    assert isinstance(context, dict)
    _add_identifier(state, "user_id", message.get("userId"))
    _add_identifier(state, "anonymous_id", message.get("anonymousId"))
    for traits in (message.get("traits"), context.get("traits")):
        if isinstance(traits, dict):
            _add_identifier(state, "email", traits.get("email"))
    device = context.get("device")
    if isinstance(device, dict) and device.get("adTrackingEnabled") is True:
        platform = device.get("type")
        if platform in ("ios", "android"):
            _add_identifier(state, f"{platform}.idfa", device.get("advertisingId"))


def _add_identifier(state: ProfileState, kind: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        return
    values = state.identifiers.setdefault(kind, [])
    if value not in values and len(values) < MAX_VALUES_PER_IDENTIFIER:
        values.append(value)


def merge(into: ProfileState, other: ProfileState, streams: dict[str, Stream]) -> ProfileState:
    """One profile holding both: the last updated value of each trait, every identifier,
    account link and bucket (buckets of the same hour combined). `values` are `into`'s."""
    merged = msgspec.structs.replace(
        into,
        traits=dict(into.traits),
        trait_times_ms=dict(into.trait_times_ms),
        identifiers={k: list(v) for k, v in into.identifiers.items()},
        groups=list(into.groups),
        streams={k: dict(v) for k, v in into.streams.items()},
        values=dict(into.values),
    )
    for key, value in other.traits.items():
        if other.trait_times_ms.get(key, 0) > merged.trait_times_ms.get(key, -1):
            merged.traits[key] = value
            merged.trait_times_ms[key] = other.trait_times_ms.get(key, 0)
    for kind, values in other.identifiers.items():
        for value in values:
            _add_identifier(merged, kind, value)
    merged.groups.extend(g for g in other.groups if g not in merged.groups)
    for stream_id, buckets in other.streams.items():
        stream = streams.get(stream_id)
        if stream is None:
            continue  # a stream no definition reads any more
        target = merged.streams.setdefault(stream_id, {})
        for hour, bucket in buckets.items():
            target[hour] = combine(stream.spec.reducer, target.get(hour), bucket)
    return merged
