"""Reading the calls of a query tree: the arguments of extractors, filters and reducers, an
event chain's filters as they are chained (`Vector`), and the canonical text that names a
stream. No closures are built here; plan.py does that."""

from __future__ import annotations

from typing import Any

import msgspec

from cdpd.engage.reducers import Reducer
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
from cdpd.engage.values import SUGAR, split_path


class Vector(msgspec.Struct):
    """An event chain being built: extractor and filters, before its reducer."""

    event: str
    offset: int
    message_conditions: list[Node] = msgspec.field(default_factory=list)
    step_conditions: list[Node] = msgspec.field(default_factory=list)
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    window: tuple[int, int | None] | None = None
    relative: bool = False


def string_arg(node: Call) -> str:
    if len(node.args) != 1 or not isinstance(node.args[0], Literal):
        raise QueryError(f"{node.name}() takes one quoted name", node.offset)
    value = node.args[0].value
    if not isinstance(value, str) or not value:
        raise QueryError(f"{node.name}() takes one quoted name", node.args[0].offset)
    return value


def no_args(node: Call) -> None:
    if node.args:
        raise QueryError(f"{node.name}() takes no arguments", start_of(node.args[0]))


def constant_args(node: Call, kind: str) -> list[Any] | None:
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


def split_where(vector: Vector, condition: Node) -> None:
    """Conditions on the message are tested once as each event arrives; conditions on other
    events (funnel steps) are tested per parent hour at evaluation time."""
    items = (
        condition.items
        if isinstance(condition, Junction) and condition.op == "AND"
        else (condition,)
    )
    for item in items:
        if mentions_event(item):
            vector.step_conditions.append(item)
        else:
            vector.message_conditions.append(item)


def mentions_event(node: Node) -> bool:
    if isinstance(node, Call):
        if node.receiver is None and node.name == "event":
            return True
        return (node.receiver is not None and mentions_event(node.receiver)) or any(
            mentions_event(arg) for arg in node.args
        )
    if isinstance(node, Compare):
        return mentions_event(node.left) or mentions_event(node.right)
    if isinstance(node, Junction):
        return any(mentions_event(item) for item in node.items)
    if isinstance(node, Prefix | Cast):
        return mentions_event(node.operand)
    return False


def sources(vector: Vector, node: Call) -> None:
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
            raise QueryError("sources() lists quoted source names", start_of(item))
        names.append(item.value)
    if named.name == "exclude":
        vector.exclude = tuple(sorted({*vector.exclude, *names}))
    else:
        vector.include = tuple(sorted({*vector.include, *names}))


def window(vector: Vector, node: Call, *, inside_step: bool) -> None:
    if vector.window is not None:
        raise QueryError("an event() chain takes one within() or between()", node.offset)
    relative = False
    args = list(node.args)
    if args and isinstance(args[0], Named):
        if args[0].name != "parent":
            raise QueryError(f"{node.name}() takes parent:, not {args[0].name}:", args[0].offset)
        relative = True
        args[0] = args[0].value
    if relative and not inside_step:
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


def reducer_of(node: Call) -> Reducer:
    name = node.name
    if name == "count":
        no_args(node)
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
            f"{name}() reduces an event property: {name}(property('x'))", start_of(target)
        )
    if target.args and isinstance(target.args[0], Named):
        raise QueryError(
            "a reducer reads the event's own property, not the parent's", target.offset
        )
    path = split_path(string_arg(target))
    min_frequency = 1
    if name == "mode":
        frequency = node.args[1]
        if (
            not isinstance(frequency, Literal)
            or not isinstance(frequency.value, int)
            or (isinstance(frequency.value, bool) or frequency.value < 1)
        ):
            raise QueryError("mode() takes a minimum frequency of 1 or more", start_of(frequency))
        min_frequency = frequency.value
    return Reducer(name, path, cast, min_frequency)


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


def start_of(node: Node) -> int:
    if isinstance(node, Call) and node.receiver is not None:
        return start_of(node.receiver)
    if isinstance(node, Compare):
        return start_of(node.left)
    if isinstance(node, Junction):
        return start_of(node.items[0])
    if isinstance(node, Cast):
        return start_of(node.operand)
    return node.offset
