"""Segment's FQL subset for subscriptions: parse once, then test a message in Python or turn
the condition into SQL over the outbox's `payload` column (the router routes with it).

    type = "track" and event = "Order Completed"
    type = "track" and (event = "Signed Up" or properties.plan != "free")
    properties.total > 100 and contains(event, "Order") and !match(context.page.path, "/admin*")
    userId != null                          (the field exists and is not null)

Semantics, the same in both evaluators: `=` and `!=` compare JSON values of the same kind
(strings with strings, numbers with numbers, `true`/`false`, `null` meaning absent or null);
`<`, `<=`, `>`, `>=` compare numbers only (anything else is false); `contains(f, "s")` is a
substring test and `match(f, "p*")` a glob where `*` is any run of characters, both on strings
only; `and`, `or`, `not`/`!` and parentheses combine.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from typing import Any, Literal

import msgspec

Value = str | float | bool | None
Operator = Literal["=", "!=", "<", "<=", ">", ">="]


class FqlError(ValueError):
    """A subscription that does not parse; the message says where."""


class Compare(msgspec.Struct, frozen=True):
    path: tuple[str, ...]
    op: Operator
    value: Value


class Call(msgspec.Struct, frozen=True):
    function: Literal["contains", "match"]
    path: tuple[str, ...]
    argument: str


class Not(msgspec.Struct, frozen=True):
    operand: Node


class Both(msgspec.Struct, frozen=True):
    left: Node
    right: Node


class Either(msgspec.Struct, frozen=True):
    left: Node
    right: Node


Node = Compare | Call | Not | Both | Either

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op>!=|<=|>=|=|<|>|!|\(|\)|,)
      | (?P<word>[A-Za-z_$][A-Za-z0-9_$\-]*(?:\.[A-Za-z0-9_$\-]+)*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "true", "false", "null", "contains", "match"}


def parse(text: str) -> Node:
    """The condition `text` describes; FqlError says what is wrong and where."""
    parser = _Parser(_tokens(text), text)
    node = parser.expression()
    parser.expect_end()
    return node


def matches(node: Node, message: dict[str, Any]) -> bool:
    if isinstance(node, Compare):
        return _compare(_lookup(message, node.path), node.op, node.value)
    if isinstance(node, Call):
        value = _lookup(message, node.path)
        if not isinstance(value, str):
            return False
        if node.function == "contains":
            return node.argument in value
        return fnmatch.fnmatchcase(value, _glob(node.argument))
    if isinstance(node, Not):
        return not matches(node.operand, message)
    if isinstance(node, Both):
        return matches(node.left, message) and matches(node.right, message)
    return matches(node.left, message) or matches(node.right, message)


def to_sql(node: Node, column: str = "payload") -> tuple[str, list[Any]]:
    """A SQL condition on the JSON text in `column` (SQLite JSON functions), with parameters.
    Every test is made strictly true or false (never NULL), so that NOT means what it says."""
    if isinstance(node, Compare):
        sql, params = _compare_sql(column, node)
        return f"coalesce({sql}, 0)", params
    if isinstance(node, Call):
        path = _json_path(node.path)
        if node.function == "contains":
            return (
                f"coalesce(json_type({column}, ?) = 'text' AND instr({column} ->> ?, ?) > 0, 0)",
                [path, path, node.argument],
            )
        return (
            f"coalesce(json_type({column}, ?) = 'text' AND ({column} ->> ?) GLOB ?, 0)",
            [path, path, _glob(node.argument)],
        )
    if isinstance(node, Not):
        sql, params = to_sql(node.operand, column)
        return f"(NOT {sql})", params
    left, left_params = to_sql(node.left, column)
    right, right_params = to_sql(node.right, column)
    joiner = "AND" if isinstance(node, Both) else "OR"
    return f"({left} {joiner} {right})", left_params + right_params


# -- evaluation ----------------------------------------------------------------------------------


def _lookup(message: Any, path: tuple[str, ...]) -> Any:
    value = message
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _compare(actual: Any, op: Operator, expected: Any) -> bool:
    if op in ("=", "!="):
        same = _kind(actual) == _kind(expected) and actual == expected
        return same if op == "=" else not same
    if _kind(actual) != "number" or _kind(expected) != "number":
        return False
    return bool(_ORDERINGS[op](actual, expected))


_ORDERINGS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _glob(pattern: str) -> str:
    """FQL's match() knows only `*`: every other glob character is taken literally."""
    return "".join(c if c == "*" else f"[{c}]" if c in "?[]" else c for c in pattern)


# -- SQL ---------------------------------------------------------------------------------------


def _json_path(path: tuple[str, ...]) -> str:
    return "$" + "".join('."' + key.replace('"', '\\"') + '"' for key in path)


def _compare_sql(column: str, node: Compare) -> tuple[str, list[Any]]:
    path = _json_path(node.path)
    kind = f"json_type({column}, ?)"
    value = node.value
    if value is None:
        same = f"({kind} IS NULL OR {kind} = 'null')"
        params: list[Any] = [path, path]
    elif isinstance(value, bool):
        same, params = f"({kind} = ?)", [path, "true" if value else "false"]
    elif isinstance(value, str):
        same, params = f"({kind} = 'text' AND {column} ->> ? = ?)", [path, path, value]
    else:
        same = f"({kind} IN ('integer', 'real') AND {column} ->> ? = ?)"
        params = [path, path, value]
    same = f"coalesce({same}, 0)"
    if node.op == "=":
        return same, params
    if node.op == "!=":
        return f"(NOT {same})", params
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "(0)", []
    return (
        f"({kind} IN ('integer', 'real') AND {column} ->> ? {node.op} ?)",
        [path, path, value],
    )


# -- parsing -------------------------------------------------------------------------------------


class _Token(msgspec.Struct, frozen=True):
    kind: str
    text: str
    column: int


def _tokens(text: str) -> list[_Token]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        found = _TOKEN.match(text, position)
        if found is None or found.end() == position:
            where = position + len(text[position:]) - len(text[position:].lstrip()) + 1
            raise FqlError(f"unexpected character {text[where - 1]!r} at column {where}")
        kind = found.lastgroup or "op"
        tokens.append(_Token(kind, found.group(kind), found.start(kind) + 1))
        position = found.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token], text: str) -> None:
        self._tokens = tokens
        self._at = 0
        self._text = text

    def expression(self) -> Node:
        node = self._conjunction()
        while self._accept_word("or"):
            node = Either(node, self._conjunction())
        return node

    def expect_end(self) -> None:
        if self._at < len(self._tokens):
            token = self._tokens[self._at]
            raise FqlError(f"unexpected {token.text!r} at column {token.column}")

    def _conjunction(self) -> Node:
        node = self._negation()
        while self._accept_word("and"):
            node = Both(node, self._negation())
        return node

    def _negation(self) -> Node:
        if self._accept_word("not") or self._accept_op("!"):
            return Not(self._negation())
        return self._primary()

    def _primary(self) -> Node:
        if self._accept_op("("):
            node = self.expression()
            self._expect_op(")")
            return node
        token = self._next("a field, contains(...) or match(...)")
        if token.kind == "word" and token.text in ("contains", "match") and self._accept_op("("):
            path = self._path(self._next("a field"))
            self._expect_op(",")
            argument = self._next("a string")
            if argument.kind != "string":
                raise FqlError(f"{token.text}() takes a string at column {argument.column}")
            self._expect_op(")")
            return Call(token.text, path, _unquote(argument.text))  # type: ignore[arg-type]
        path = self._path(token)
        operator = self._next("an operator (=, !=, <, <=, >, >=)")
        if operator.text not in ("=", "!=", "<", "<=", ">", ">="):
            raise FqlError(f"expected an operator at column {operator.column}")
        return Compare(path, operator.text, self._value())  # type: ignore[arg-type]

    def _value(self) -> Value:
        token = self._next("a value")
        if token.kind == "string":
            return _unquote(token.text)
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "word" and token.text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token.text]
        raise FqlError(
            f"expected a value (a string, number, true, false or null) at column {token.column}"
        )

    def _path(self, token: _Token) -> tuple[str, ...]:
        if token.kind != "word" or token.text in _KEYWORDS:
            raise FqlError(f"expected a field name at column {token.column}, got {token.text!r}")
        return tuple(token.text.split("."))

    def _next(self, wanted: str) -> _Token:
        if self._at >= len(self._tokens):
            raise FqlError(f"expected {wanted} at the end")
        token = self._tokens[self._at]
        self._at += 1
        return token

    def _accept_word(self, word: str) -> bool:
        if self._at < len(self._tokens):
            token = self._tokens[self._at]
            if token.kind == "word" and token.text == word:
                self._at += 1
                return True
        return False

    def _accept_op(self, op: str) -> bool:
        token = self._tokens[self._at] if self._at < len(self._tokens) else None
        if token is not None and token.kind == "op" and token.text == op:
            self._at += 1
            return True
        return False

    def _expect_op(self, op: str) -> None:
        if not self._accept_op(op):
            where = self._tokens[self._at].column if self._at < len(self._tokens) else "the end"
            raise FqlError(f"expected {op!r} at {'column ' if where != 'the end' else ''}{where}")


def _unquote(text: str) -> str:
    return str(msgspec.json.decode(text.encode()))
