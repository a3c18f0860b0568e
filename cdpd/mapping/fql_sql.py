"""FQL conditions as SQL over a JSON text column (SQLite's JSON functions), with the very
answers of `fql.matches`: the router selects the messages a destination is owed with it.

Every test is made strictly true or false (never NULL), so that NOT means what it says.
`json_type(payload, path)` is NULL for a missing field and 'text', 'integer', 'real', 'true',
'false', 'null', 'object' or 'array' otherwise.
"""

from __future__ import annotations

import math
from typing import Any

from cdpd.mapping.fql import Both, Call, Compare, Node, Not

_NUMBER = "IN ('integer', 'real')"


def to_sql(node: Node, column: str = "payload") -> tuple[str, list[Any]]:
    if isinstance(node, Compare):
        sql, params = _compare(column, node)
        return f"coalesce({sql}, 0)", params
    if isinstance(node, Call):
        sql, params = _call(column, node)
        return f"coalesce({sql}, 0)", params
    if isinstance(node, Not):
        sql, params = to_sql(node.operand, column)
        return f"(NOT {sql})", params
    left, left_params = to_sql(node.left, column)
    right, right_params = to_sql(node.right, column)
    joiner = "AND" if isinstance(node, Both) else "OR"
    return f"({left} {joiner} {right})", left_params + right_params


def json_path(path: tuple[str, ...]) -> str:
    return "$" + "".join('."' + key.replace('"', '\\"') + '"' for key in path)


def _compare(column: str, node: Compare) -> tuple[str, list[Any]]:
    if column == "payload" and node.path == ("type",) and node.op == "string_equals":
        # The outbox's `type` column holds the message's type (ingest stores only messages
        # whose type is one of Segment's six, as text): no JSON to parse for the commonest test.
        return "(type = ?)", [node.value]
    if column == "payload" and node.path == ("type",) and node.op == "string_not_equals":
        return "(type <> ?)", [node.value]
    path = json_path(node.path)
    kind = f"json_type({column}, ?)"
    value = f"({column} ->> ?)"
    op = node.op
    if op in ("string_equals", "string_not_equals"):
        same = f"({kind} = 'text' AND {value} = ?)"
        sql = same if op == "string_equals" else f"(NOT coalesce({same}, 0))"
        return sql, [path, path, node.value]
    if op in ("exists", "not_exists"):
        there = f"coalesce({kind} <> 'null', 0)"
        return (there if op == "exists" else f"(NOT {there})"), [path]
    if op in ("is_true", "is_false"):
        return f"({kind} = ?)", [path, "true" if op == "is_true" else "false"]
    number = node.value
    if not isinstance(number, (int, float)) or math.isnan(number):
        return "(0)", []
    sql_op = {"number_equals": "=", "number_not_equals": "<>"}.get(op, op)
    return f"({kind} {_NUMBER} AND {value} {sql_op} ?)", [path, path, number]


def _call(column: str, node: Call) -> tuple[str, list[Any]]:
    path = json_path(node.path)
    text = f"({column} ->> ?)"
    params: list[Any]
    if node.function == "contains":
        found, params = f"instr({text}, ?) > 0", [path, node.argument]
    elif node.function == "starts_with":
        found, params = f"substr({text}, 1, ?) = ?", [path, len(node.argument), node.argument]
    else:
        found = f"(length({text}) >= ? AND substr({text}, length({text}) - ? + 1) = ?)"
        size = len(node.argument)
        params = [path, size, path, path, size, node.argument]
    if node.negated:
        found = f"NOT ({found})"
    return f"(json_type({column}, ?) = 'text' AND {found})", [path, *params]
