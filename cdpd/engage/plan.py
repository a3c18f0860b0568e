"""Compile a query (see syntax.py) once into an evaluation plan: closures over a profile's
aggregates, plus the event streams whose aggregates the plan reads.

A *stream* is what one `event(...)` chain asks to be kept: events of one name that pass its
`where()` conditions on the message and its `sources()` filter, reduced by one reducer, into
hour buckets (or one all-time bucket when no window is used). State is kept per stream, never
as raw history, so evaluating a plan costs the same however many events a profile has.

Windows are ages in whole hours: `within(N days)` takes the buckets of the last N*24 hours
including the current one; `between(A, B)` the buckets at least A and less than B old (in
either order). `within(parent: N)` inside a `where()` (a funnel step) measures from each
parent event's hour instead of from now: the parent's buckets count only where the step's
condition holds relative to that hour.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from cdpd.engage import syntax
from cdpd.engage.reducers import Reducer, fold
from cdpd.engage.syntax import (
    Call,
    Cast,
    Compare,
    Duration,
    Junction,
    Literal,
    Named,
    Node,
    Prefix,
    QueryError,
    ValueList,
)
from cdpd.engage.values import COMPARATORS, SUGAR, TIME_RELATIVE, lookup, moment_ms, split_path

MAX_PRIMARY_EXPRESSIONS = 50
REDUCERS = {"count", "sum", "avg", "max", "min", "mode", "first", "last", "unique"}
FILTERS = {"where", "sources", "within", "between"}
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


Fn = Callable[[Ctx], Any]


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


class _Vector(msgspec.Struct):
    """An event chain being built: extractor and filters, before its reducer."""

    event: str
    offset: int
    message_conditions: list[Node] = msgspec.field(default_factory=list)
    step_conditions: list[Node] = msgspec.field(default_factory=list)
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    window: tuple[int, int | None] | None = None
    relative: bool = False


class _Env(msgspec.Struct):
    since_ms: int | None
    message: bool = False  # inside where(): property() and context() are allowed
    account: bool = False  # an account query outside ANY/ALL
    parent_horizon: int | str | None = "none"  # inside a funnel step: the parent's horizon
    streams: dict[str, Stream] = msgspec.field(default_factory=dict)
    trait_refs: set[str] = msgspec.field(default_factory=set)
    windows: list[tuple[str, int, int | None]] = msgspec.field(default_factory=list)
    primaries: int = 0
    time_relative: bool = False
    uses_account: bool = False


def compile_query(query: str, *, since_ms: int | None = None) -> Plan:
    """The plan of a query; raises QueryError pointing at what is wrong. `since_ms` makes the
    plan's streams count only events at or after that time (a definition without history)."""
    tree = syntax.parse(query)
    env = _Env(since_ms=since_ms, account=_uses_account(tree))
    kind, evaluate = _compile(tree, env)
    if kind == "vector":
        raise QueryError("an event() chain needs a reducer such as count()", _start(tree))
    if env.primaries > MAX_PRIMARY_EXPRESSIONS:
        raise QueryError(
            f"a definition may have at most {MAX_PRIMARY_EXPRESSIONS} primary expressions "
            f"(this one has {env.primaries})",
            0,
        )
    return Plan(
        query=query,
        result=kind,
        evaluate=evaluate,
        streams=tuple(env.streams.values()),
        trait_refs=frozenset(env.trait_refs),
        account=env.uses_account,
        time_relative=env.time_relative,
        windows=tuple(env.windows),
    )


def _uses_account(node: Node) -> bool:
    if isinstance(node, Prefix):
        return node.op in ("ANY", "ALL") or _uses_account(node.operand)
    if isinstance(node, Junction):
        return any(_uses_account(item) for item in node.items)
    return False


def _compile(node: Node, env: _Env) -> tuple[str, Any]:
    if isinstance(node, Junction):
        return "boolean", _junction(node, env)
    if isinstance(node, Prefix):
        return "boolean", _prefix(node, env)
    if isinstance(node, Compare):
        method = Call(SUGAR[node.op], (node.right,), node.offset, node.left)
        return _compile(method, env)
    if isinstance(node, Literal):
        value = node.value
        return "scalar", lambda ctx: value
    if isinstance(node, Call):
        return _call(node, env)
    if isinstance(node, Duration):
        raise QueryError(
            "a duration only goes inside within(), between() or a date comparator", node.offset
        )
    raise QueryError("this cannot stand here", _start(node))


def _boolean(node: Node, env: _Env) -> Fn:
    kind, fn = _compile(node, env)
    if kind != "boolean":
        raise QueryError(
            "expected a condition (a comparison such as >= 1, or exists()), found a value",
            _start(node),
        )
    return fn  # type: ignore[no-any-return]


def _scalar(node: Node, env: _Env) -> Fn:
    kind, fn = _compile(node, env)
    if kind == "vector":
        raise QueryError("an event() chain needs a reducer such as count()", _start(node))
    if kind == "boolean":
        raise QueryError("expected a value, found a condition", _start(node))
    return fn  # type: ignore[no-any-return]


def _junction(node: Junction, env: _Env) -> Fn:
    parts = tuple(_boolean(item, env) for item in node.items)
    if node.op == "AND":
        return lambda ctx: all(part(ctx) for part in parts)
    return lambda ctx: any(part(ctx) for part in parts)


def _prefix(node: Prefix, env: _Env) -> Fn:
    if node.op == "NOT":
        operand = _boolean(node.operand, env)
        return lambda ctx: not operand(ctx)
    if not env.account or env.message:
        raise QueryError(f"{node.op} cannot be nested inside another ANY or ALL", node.offset)
    env.uses_account = True
    inner = _Env(
        since_ms=env.since_ms,
        streams=env.streams,
        trait_refs=env.trait_refs,
        windows=env.windows,
    )
    operand = _boolean(node.operand, inner)
    env.primaries += inner.primaries
    env.time_relative |= inner.time_relative
    if node.op == "ANY":
        return lambda ctx: any(operand(member) for member in ctx.members)
    return lambda ctx: bool(ctx.members) and all(operand(member) for member in ctx.members)


def _call(node: Call, env: _Env) -> tuple[str, Any]:
    if node.receiver is None:
        return _extractor(node, env)
    kind, receiver = _compile(node.receiver, env)
    if kind == "vector":
        return _vector_step(receiver, node, env)
    if node.name in COMPARATORS:
        if kind == "boolean":
            raise QueryError(f"{node.name}() compares a value, not a condition", node.offset)
        return "boolean", _comparator(receiver, node, env)
    if kind == "list" and node.name == "count":
        _no_args(node)
        return "scalar", lambda ctx: len(receiver(ctx) or ())
    raise QueryError(_not_here(node.name, kind), node.offset)


def _not_here(name: str, kind: str) -> str:
    if name in REDUCERS or name in FILTERS:
        return f"{name}() applies to an event() chain"
    if kind == "boolean":
        return f"{name}() cannot follow a condition; a condition ends the expression"
    known = ", ".join(sorted(COMPARATORS))
    if name in ("event", "trait", "property", "context", "literal", "entity"):
        return f"{name}() starts an expression and cannot be chained"
    return f"unknown function {name}() here (a value takes one of: {known})"


def _extractor(node: Call, env: _Env) -> tuple[str, Any]:
    name = node.name
    if name == "event":
        if env.account:
            raise QueryError("an account audience reads events inside ANY or ALL", node.offset)
        env.primaries += 1
        return "vector", _Vector(event=_string_arg(node), offset=node.offset)
    if name == "trait":
        env.primaries += 1
        path = split_path(_string_arg(node))
        env.trait_refs.add(path[0])
        return "scalar", _trait(path)
    if name in ("property", "context"):
        return "scalar", _message_field(node, env)
    if name == "literal":
        if len(node.args) != 1 or not isinstance(node.args[0], Literal):
            raise QueryError("literal() takes one value", node.offset)
        value = node.args[0].value
        return "scalar", lambda ctx: value
    if name == "entity":
        raise QueryError(
            "entity() needs Linked Audiences' warehouse data graph, which cdpd does not have",
            node.offset,
        )
    if name in COMPARATORS or name in REDUCERS or name in FILTERS:
        raise QueryError(
            f"{name}() needs something before it, such as trait('x').{name}(...)", node.offset
        )
    raise QueryError(
        f"unknown function {name}() (an expression starts with event, trait, property, "
        "context, literal or entity)",
        node.offset,
    )


def _trait(path: tuple[str, ...]) -> Fn:
    head = path[0]

    def trait(ctx: Ctx) -> Any:
        if head in ctx.values:
            return lookup(ctx.values, path)
        return lookup(ctx.state.traits, path)

    return trait


def _message_field(node: Call, env: _Env) -> Fn:
    if node.args and isinstance(node.args[0], Named):
        raise QueryError(
            "dynamic property references (property(parent: ...)) are batch-only at Segment "
            "and not supported by cdpd",
            node.offset,
        )
    path = split_path(_string_arg(node))
    if not env.message:
        raise QueryError(f"{node.name}() is only valid inside where() or a reducer", node.offset)
    if node.name == "property":
        return lambda ctx: lookup(ctx.properties, path)
    return lambda ctx: lookup(ctx.context, path)


def _string_arg(node: Call) -> str:
    if len(node.args) != 1 or not isinstance(node.args[0], Literal):
        raise QueryError(f"{node.name}() takes one quoted name", node.offset)
    value = node.args[0].value
    if not isinstance(value, str) or not value:
        raise QueryError(f"{node.name}() takes one quoted name", node.args[0].offset)
    return value


def _no_args(node: Call) -> None:
    if node.args:
        raise QueryError(f"{node.name}() takes no arguments", _start(node.args[0]))


def _comparator(receiver: Fn, node: Call, env: _Env) -> Fn:
    function, arity, kind = COMPARATORS[node.name]
    if arity == "some" and not node.args:
        raise QueryError(f"{node.name}() needs at least one value", node.offset)
    if isinstance(arity, int) and len(node.args) != arity:
        raise QueryError(
            f"{node.name}() takes {arity or 'no'} argument{'s' if arity != 1 else ''}",
            node.offset,
        )
    args: list[Fn] = []
    for arg in node.args:
        args.extend(_comparator_args(node.name, kind, arg, env))
    if node.name in TIME_RELATIVE:
        env.time_relative = True
    constants = _constant_args(node, kind)
    if constants is not None:
        return _constant_comparator(node.name, function, receiver, constants)
    if len(args) == 1:
        only = args[0]
        return lambda ctx: function(receiver(ctx), [only(ctx)], ctx.now_ms)
    return lambda ctx: function(receiver(ctx), [arg(ctx) for arg in args], ctx.now_ms)


def _constant_args(node: Call, kind: str) -> list[Any] | None:
    """The arguments when all are written out (the usual case), so they are built once."""
    values: list[Any] = []
    for arg in node.args:
        if isinstance(arg, Duration) and kind == "duration":
            values.append(arg.hours)
        elif isinstance(arg, Literal):
            values.append(arg.value)
        elif isinstance(arg, ValueList) and all(isinstance(i, Literal) for i in arg.items):
            values += [i.value for i in arg.items if isinstance(i, Literal)]
        else:
            return None
    return values


_NUMERIC_ORDER: dict[str, Callable[[float, float], bool]] = {
    "greater_than": lambda a, b: a > b,
    "at_least": lambda a, b: a >= b,
    "less_than": lambda a, b: a < b,
    "at_most": lambda a, b: a <= b,
}


def _constant_comparator(
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
    return lambda ctx: function(receiver(ctx), constants, ctx.now_ms)


def _comparator_args(name: str, kind: str, arg: Node, env: _Env) -> list[Fn]:
    if kind == "duration":
        if not isinstance(arg, Duration):
            raise QueryError(f"{name}() takes a duration such as 7 days", _start(arg))
        hours = arg.hours
        return [lambda ctx: hours]
    if isinstance(arg, Duration):
        raise QueryError(f"{name}() takes a value, not a duration", arg.offset)
    if isinstance(arg, ValueList):
        return [_scalar(item, env) for item in arg.items]
    if kind == "date" and isinstance(arg, Literal) and moment_ms(arg.value) is None:
        raise QueryError(f"{name}() takes an ISO-8601 date or timestamp", arg.offset)
    return [_scalar(arg, env)]


def _vector_step(vector: _Vector, node: Call, env: _Env) -> tuple[str, Any]:
    name = node.name
    if name == "where":
        if len(node.args) != 1 or isinstance(node.args[0], Named | Duration | ValueList):
            raise QueryError("where() takes one condition", node.offset)
        _split_where(vector, node.args[0])
        return "vector", vector
    if name == "sources":
        _sources(vector, node)
        return "vector", vector
    if name in ("within", "between"):
        _window(vector, node, env)
        return "vector", vector
    if name in REDUCERS:
        return _reduce(vector, node, env)
    if name in COMPARATORS:
        raise QueryError(
            f"an event() chain needs a reducer such as count() before {name}()", node.offset
        )
    raise QueryError(
        f"unknown function {name}() on an event() chain (expected one of: "
        f"{', '.join(sorted(FILTERS | REDUCERS))})",
        node.offset,
    )


def _split_where(vector: _Vector, condition: Node) -> None:
    """Conditions on the message are tested once as each event arrives; conditions on other
    events (funnel steps) are tested per parent hour at evaluation time."""
    items = (
        condition.items
        if isinstance(condition, Junction) and condition.op == "AND"
        else (condition,)
    )
    for item in items:
        if _mentions_event(item):
            vector.step_conditions.append(item)
        else:
            vector.message_conditions.append(item)


def _mentions_event(node: Node) -> bool:
    if isinstance(node, Call):
        if node.receiver is None and node.name == "event":
            return True
        return (node.receiver is not None and _mentions_event(node.receiver)) or any(
            _mentions_event(arg) for arg in node.args
        )
    if isinstance(node, Compare):
        return _mentions_event(node.left) or _mentions_event(node.right)
    if isinstance(node, Junction):
        return any(_mentions_event(item) for item in node.items)
    if isinstance(node, Prefix | Cast):
        return _mentions_event(node.operand)
    return False


def _sources(vector: _Vector, node: Call) -> None:
    if len(node.args) != 1 or not isinstance(node.args[0], Named):
        raise QueryError(
            "sources() takes exclude: or include: and a list of source names", node.offset
        )
    named = node.args[0]
    if named.name not in ("exclude", "include"):
        raise QueryError(f"sources() takes exclude: or include:, not {named.name}:", named.offset)
    items = named.value.items if isinstance(named.value, ValueList) else (named.value,)
    names = []
    for item in items:
        if not isinstance(item, Literal) or not isinstance(item.value, str):
            raise QueryError("sources() lists quoted source names", _start(item))
        names.append(item.value)
    if named.name == "exclude":
        vector.exclude = tuple(sorted({*vector.exclude, *names}))
    else:
        vector.include = tuple(sorted({*vector.include, *names}))


def _window(vector: _Vector, node: Call, env: _Env) -> None:
    if vector.window is not None:
        raise QueryError("an event() chain takes one within() or between()", node.offset)
    relative = False
    args = list(node.args)
    if args and isinstance(args[0], Named):
        if args[0].name != "parent":
            raise QueryError(f"{node.name}() takes parent:, not {args[0].name}:", args[0].offset)
        relative = True
        args[0] = args[0].value
    if relative and env.parent_horizon == "none":
        raise QueryError(
            f"{node.name}(parent: ...) measures from a parent event: it belongs inside the "
            "where() of another event()",
            node.offset,
        )
    expected = 1 if node.name == "within" else 2
    if len(args) != expected or not all(isinstance(arg, Duration) for arg in args):
        shape = "7 days" if expected == 1 else "7 days, 14 days"
        raise QueryError(f"{node.name}() takes {shape}", node.offset)
    hours = [arg.hours for arg in args if isinstance(arg, Duration)]
    if node.name == "within":
        vector.window = (0, hours[0])
    else:
        vector.window = (min(hours), max(hours))
    vector.relative = relative


def _reduce(vector: _Vector, node: Call, env: _Env) -> tuple[str, Any]:
    reducer = _reducer(node)
    message_env = _Env(
        since_ms=env.since_ms,
        message=True,
        streams=env.streams,
        trait_refs=env.trait_refs,
        windows=env.windows,
    )
    matches = _conjunction([_boolean(item, message_env) for item in vector.message_conditions])
    env.primaries += message_env.primaries
    hourly = vector.window is not None or bool(vector.step_conditions)
    horizon = _horizon(vector, env)
    spec = StreamSpec(
        id="",
        event=vector.event,
        where=" AND ".join(canonical(item) for item in vector.message_conditions),
        exclude_sources=vector.exclude,
        include_sources=vector.include,
        reducer=reducer,
        hourly=hourly,
        since_ms=env.since_ms,
    )
    spec = msgspec.structs.replace(spec, id=stream_id(spec))
    previous = env.streams.get(spec.id)
    if previous is not None:
        horizon = _wider(previous.horizon_hours, horizon)
    env.streams[spec.id] = Stream(spec=spec, matches=matches, horizon_hours=horizon)
    step_env = _Env(
        since_ms=env.since_ms,
        streams=env.streams,
        trait_refs=env.trait_refs,
        windows=env.windows,
        parent_horizon=horizon,
    )
    steps = _conjunction([_boolean(item, step_env) for item in vector.step_conditions])
    env.primaries += step_env.primaries
    env.time_relative |= step_env.time_relative
    if vector.window is not None and not vector.relative:
        env.windows.append((spec.id, vector.window[0], vector.window[1]))
    kind = "list" if reducer.kind == "unique" else "scalar"
    return kind, _aggregate(spec, vector, steps)


def _horizon(vector: _Vector, env: _Env) -> int | None:
    if vector.relative:
        return env.parent_horizon if isinstance(env.parent_horizon, int) else None
    if vector.window is None:
        return None
    return vector.window[1]


def _wider(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)


def _conjunction(parts: list[Fn]) -> Fn | None:
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return lambda ctx: all(part(ctx) for part in parts)


def _reducer(node: Call) -> Reducer:
    name = node.name
    if name == "count":
        _no_args(node)
        return Reducer("count")
    expected = 2 if name == "mode" else 1
    if len(node.args) != expected:
        shape = "property('x'), 2" if name == "mode" else "property('x')"
        raise QueryError(f"{name}() takes {shape}", node.offset)
    target, cast = node.args[0], None
    if isinstance(target, Cast):
        allowed = ("number", "string", "array") if name == "mode" else ("number", "string")
        if name not in ("min", "max", "mode") or target.type_name not in allowed:
            raise QueryError(
                f"{name}() takes 'as' {' or '.join(allowed)}"
                if name in ("min", "max", "mode")
                else f"{name}() takes no 'as' type",
                target.offset,
            )
        cast, target = target.type_name, target.operand
    if not (isinstance(target, Call) and target.name == "property" and target.receiver is None):
        raise QueryError(
            f"{name}() reduces an event property: {name}(property('x'))", _start(target)
        )
    if target.args and isinstance(target.args[0], Named):
        raise QueryError(
            "a reducer reads the event's own property, not the parent's", target.offset
        )
    path = split_path(_string_arg(target))
    min_frequency = 1
    if name == "mode":
        frequency = node.args[1]
        if (
            not isinstance(frequency, Literal)
            or not isinstance(frequency.value, int)
            or (isinstance(frequency.value, bool) or frequency.value < 1)
        ):
            raise QueryError("mode() takes a minimum frequency of 1 or more", _start(frequency))
        min_frequency = frequency.value
    return Reducer(name, path, cast, min_frequency)


def _aggregate(spec: StreamSpec, vector: _Vector, steps: Fn | None) -> Fn:
    reducer, stream = spec.reducer, spec.id
    window, relative = vector.window, vector.relative
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
            selected = _steps_hold(ctx, pairs, steps)
        else:
            anchor = ctx.now_hour
            selected = [b for h, b in buckets.items() if lo <= anchor - h < top]
        if counting:
            return sum(selected)
        return fold(reducer, selected)

    return value


def _steps_hold(ctx: Ctx, selected: list[Any], steps: Fn) -> list[Any]:
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


def canonical(node: Node) -> str:
    """The query text of a tree without spacing or sugar differences (for naming streams)."""
    if isinstance(node, Literal):
        return msgspec.json.encode(node.value).decode()
    if isinstance(node, Duration):
        return f"{node.amount} {node.unit}"
    if isinstance(node, Cast):
        return f"{canonical(node.operand)} as {node.type_name}"
    if isinstance(node, ValueList):
        return "[" + ",".join(canonical(item) for item in node.items) + "]"
    if isinstance(node, Named):
        return f"{node.name}:{canonical(node.value)}"
    if isinstance(node, Call):
        head = f"{canonical(node.receiver)}." if node.receiver is not None else ""
        return f"{head}{node.name}({','.join(canonical(arg) for arg in node.args)})"
    if isinstance(node, Compare):
        return f"{canonical(node.left)}.{SUGAR[node.op]}({canonical(node.right)})"
    if isinstance(node, Junction):
        return "(" + f" {node.op} ".join(canonical(item) for item in node.items) + ")"
    return f"{node.op} {canonical(node.operand)}"


def _start(node: Node) -> int:
    if isinstance(node, Call) and node.receiver is not None:
        return _start(node.receiver)
    if isinstance(node, Compare):
        return _start(node.left)
    if isinstance(node, Junction):
        return _start(node.items[0])
    if isinstance(node, Cast):
        return _start(node.operand)
    return node.offset
