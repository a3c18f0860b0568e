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

from typing import Any

import msgspec

from cdpd.engage import syntax
from cdpd.engage.calls import (
    Vector,
    canonical,
    constant_args,
    no_args,
    reducer_of,
    sources,
    split_where,
    start_of,
    string_arg,
    window,
)
from cdpd.engage.evaluation import (
    Ctx,
    Fn,
    Plan,
    Stream,
    StreamSpec,
    aggregate,
    constant_comparator,
    stream_id,
)
from cdpd.engage.syntax import (
    Call,
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
        raise QueryError("an event() chain needs a reducer such as count()", start_of(tree))
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
    raise QueryError("this cannot stand here", start_of(node))


def _boolean(node: Node, env: _Env) -> Fn:
    kind, fn = _compile(node, env)
    if kind != "boolean":
        raise QueryError(
            "expected a condition (a comparison such as >= 1, or exists()), found a value",
            start_of(node),
        )
    return fn  # type: ignore[no-any-return]


def _scalar(node: Node, env: _Env) -> Fn:
    kind, fn = _compile(node, env)
    if kind == "vector":
        raise QueryError("an event() chain needs a reducer such as count()", start_of(node))
    if kind == "boolean":
        raise QueryError("expected a value, found a condition", start_of(node))
    return fn  # type: ignore[no-any-return]


def _junction(node: Junction, env: _Env) -> Fn:
    parts = tuple(_boolean(item, env) for item in node.items)
    if len(parts) == 2:
        first, second = parts
        if node.op == "AND":
            return lambda ctx: bool(first(ctx) and second(ctx))
        return lambda ctx: bool(first(ctx) or second(ctx))
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
        no_args(node)
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
        return "vector", Vector(event=string_arg(node), offset=node.offset)
    if name == "trait":
        env.primaries += 1
        path = split_path(string_arg(node))
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
    if len(path) == 1:

        def top_level(ctx: Ctx) -> Any:
            values = ctx.values
            return values[head] if head in values else ctx.state.traits.get(head)

        return top_level

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
    path = split_path(string_arg(node))
    if not env.message:
        raise QueryError(f"{node.name}() is only valid inside where() or a reducer", node.offset)
    if node.name == "property":
        return lambda ctx: lookup(ctx.properties, path)
    return lambda ctx: lookup(ctx.context, path)


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
    constants = constant_args(node, kind)
    if constants is not None:
        return constant_comparator(node.name, function, receiver, constants)
    if len(args) == 1:
        only = args[0]
        return lambda ctx: function(receiver(ctx), [only(ctx)], ctx.now_ms)
    return lambda ctx: function(receiver(ctx), [arg(ctx) for arg in args], ctx.now_ms)


def _comparator_args(name: str, kind: str, arg: Node, env: _Env) -> list[Fn]:
    if kind == "duration":
        if not isinstance(arg, Duration):
            raise QueryError(f"{name}() takes a duration such as 7 days", start_of(arg))
        hours = arg.hours
        return [lambda ctx: hours]
    if isinstance(arg, Duration):
        raise QueryError(f"{name}() takes a value, not a duration", arg.offset)
    if isinstance(arg, ValueList):
        return [_scalar(item, env) for item in arg.items]
    if kind == "date" and isinstance(arg, Literal) and moment_ms(arg.value) is None:
        raise QueryError(f"{name}() takes an ISO-8601 date or timestamp", arg.offset)
    return [_scalar(arg, env)]


def _vector_step(vector: Vector, node: Call, env: _Env) -> tuple[str, Any]:
    name = node.name
    if name == "where":
        if len(node.args) != 1 or isinstance(node.args[0], Named | Duration | ValueList):
            raise QueryError("where() takes one condition", node.offset)
        split_where(vector, node.args[0])
        return "vector", vector
    if name == "sources":
        sources(vector, node)
        return "vector", vector
    if name in ("within", "between"):
        window(vector, node, inside_step=env.parent_horizon != "none")
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


def _reduce(vector: Vector, node: Call, env: _Env) -> tuple[str, Any]:
    reducer = reducer_of(node)
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
    return kind, aggregate(spec, vector.window, vector.relative, steps)


def _horizon(vector: Vector, env: _Env) -> int | None:
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
