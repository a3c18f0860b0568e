"""What a compiled plan runs: the context its closures read, the Plan and Stream records, and
the closures for reduced event chains and comparisons against written values (plan.py builds
them from the query)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from cdpd.engage.reducers import Reducer, fold
from cdpd.engage.values import number

TOTAL_BUCKET = -1  # the one bucket of a stream that no window reads


class Ctx:
    """What a plan's closures read: a profile (or account) and the moment of evaluation; when
    testing a message for `where()`, the message; inside a funnel step, the parent's hour."""

    __slots__ = (
        "context",
        "members",
        "now_hour",
        "now_ms",
        "parent_hour",
        "properties",
        "state",
        "values",
    )

    def __init__(
        self,
        state: Any,
        now_ms: int,
        values: dict[str, Any] | None = None,
        *,
        properties: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        members: list[Ctx] | None = None,
    ) -> None:
        self.state = state
        self.now_ms = now_ms
        self.now_hour = now_ms // 3_600_000
        self.values = values if values is not None else {}
        self.parent_hour: int | None = None
        self.properties = properties or {}
        self.context = context or {}
        self.members = members or []


Fn = Callable[["Ctx"], Any]


class StreamSpec(msgspec.Struct, frozen=True):
    """Which events a stream keeps and how it reduces them; `id` names its state."""

    id: str
    event: str
    where: str  # canonical text of the message conditions, "" for none
    exclude_sources: tuple[str, ...]
    include_sources: tuple[str, ...]
    reducer: Reducer
    hourly: bool
    since_ms: int | None


class Stream(msgspec.Struct, frozen=True):
    spec: StreamSpec
    matches: Fn | None  # the where() test on a message context; None keeps every event
    horizon_hours: int | None  # hourly buckets older than this are never read; None: all kept


class Plan(msgspec.Struct, frozen=True):
    query: str
    result: str  # "boolean", "scalar" or "list"
    evaluate: Fn
    streams: tuple[Stream, ...]
    trait_refs: frozenset[str]  # first keys of trait() paths: other definitions it reads
    account: bool  # uses ANY/ALL: evaluated per account over its users
    time_relative: bool  # a comparator such as within_last() can change with time alone
    windows: tuple[tuple[str, int, int | None], ...]  # (stream id, lo, hi) of absolute windows


_NUMERIC_ORDER: dict[str, Callable[[float, float], bool]] = {
    "greater_than": lambda a, b: a > b,
    "at_least": lambda a, b: a >= b,
    "less_than": lambda a, b: a < b,
    "at_most": lambda a, b: a <= b,
}


def constant_comparator(
    name: str, function: Callable[[Any, list[Any], int], bool], receiver: Fn, constants: list[Any]
) -> Fn:
    bound = constants[0] if constants else None
    order = _NUMERIC_ORDER.get(name)
    if order is not None and type(bound) in (int, float):
        limit = float(bound)  # type: ignore[arg-type]

        # A number against a written number: most audience conditions (count() >= 2).
        def numeric(ctx: Ctx) -> bool:
            value = receiver(ctx)
            if type(value) in (int, float):
                return order(value, limit)
            return function(value, constants, ctx.now_ms)

        return numeric
    if name == "equals" and type(bound) is str and number(bound) is None:
        # Text against written text that is not a number: equal strings or the general rule.
        def text_equals(ctx: Ctx) -> bool:
            value = receiver(ctx)
            if type(value) is str:
                return value == bound
            return function(value, constants, ctx.now_ms)

        return text_equals
    if name in ("one_of", "none_of") and all(
        type(c) is str and number(c) is None for c in constants
    ):
        # Text against a written list of words: a set lookup, or the general rule.
        words, wanted = frozenset(constants), name == "one_of"

        def text_in(ctx: Ctx) -> bool:
            value = receiver(ctx)
            if type(value) is str:
                return (value in words) is wanted
            return function(value, constants, ctx.now_ms)

        return text_in
    return lambda ctx: function(receiver(ctx), constants, ctx.now_ms)


def aggregate(
    spec: StreamSpec, window: tuple[int, int | None] | None, relative: bool, steps: Fn | None
) -> Fn:
    """The value of a reduced event chain: its stream's buckets inside the window (and, for a
    funnel, only the parent hours where the steps hold), folded by the reducer."""
    reducer, stream = spec.reducer, spec.id
    lo, hi = window if window is not None else (0, None)
    top = hi if hi is not None else 2**62
    empty = fold(reducer, ())
    counting = reducer.kind == "count"

    def value(ctx: Ctx) -> Any:
        buckets = ctx.state.streams.get(stream)
        if not buckets:
            return empty
        if window is None and steps is None:
            return fold(reducer, buckets.values())
        if relative:
            anchor = ctx.parent_hour
            selected = [b for h, b in buckets.items() if lo <= h - anchor < top]
        elif steps is not None:
            anchor = ctx.now_hour
            pairs = [(h, b) for h, b in buckets.items() if lo <= anchor - h < top]
            selected = steps_hold(ctx, pairs, steps)
        else:
            anchor = ctx.now_hour
            selected = [b for h, b in buckets.items() if lo <= anchor - h < top]
        if counting:
            return sum(selected)
        return fold(reducer, selected)

    return value


def steps_hold(ctx: Ctx, selected: list[Any], steps: Fn) -> list[Any]:
    kept = []
    saved = ctx.parent_hour
    try:
        for hour, bucket in selected:
            ctx.parent_hour = hour
            if steps(ctx):
                kept.append(bucket)
    finally:
        ctx.parent_hour = saved
    return kept


def stream_id(spec: StreamSpec) -> str:
    """A short stable name for a stream's state, the same for the same events and reducer."""
    parts = msgspec.json.encode(
        [
            spec.event,
            spec.where,
            spec.exclude_sources,
            spec.include_sources,
            msgspec.to_builtins(spec.reducer),
            spec.hourly,
            spec.since_ms,
        ]
    )
    return "s" + hashlib.blake2b(parts, digest_size=8).hexdigest()
