"""Segment's FQL for subscriptions: parse once, then test a message in Python or turn the
condition into SQL over the outbox's `payload` column (the router routes with it; see
fql_sql.py). The answers are those of Segment's `@segment/destination-subscriptions`, which
Segment's action runtime uses:

    type = "track" and event = "Order Completed"
    type = "track" and (event = "Signed Up" or properties.plan != "free")
    properties.total > 100 and contains(event, "Order") and !match(context.page.path, "/admin*")
    userId != null                          (the field exists and is not null)
    properties.product\\ 1.price > 10         (a backslash escapes a character of a field name)

How a comparison reads depends on the field, as at Segment. On `properties.`, `traits.`,
`context.` fields (and, in cdpd, any other field): `= null` / `!= null` test for a value,
`= true` / `= false` for that boolean, `= 3` and `!= 3` want a number (a missing field is not
`!= 3`), `= "s"` wants that string and `!= "s"` is anything but that string (also
`!= true`, which is any value but the string "true"). On `type`, `event`, `name` and `userId`
every value is compared as text (`event = 3` is the event named "3"), except `name`/`userId`
`= null` / `!= null` and `userId = true/false`. `<`, `<=`, `>`, `>=` want a number. The
functions `contains(f, "s")`, `match(f, "prefix*")` and `match(f, "*suffix")` (a pattern not
ending in `*` tests the end, without its first character) want a string, and so do their
negations `!contains` and `!match`: a missing field matches neither. Without parentheses,
`and` and `or` in a row all take the last one's meaning (`a and b or c` is `a or b or c`).
cdpd adds `not`/`!` before a comparison or a parenthesis (Segment ignores it).
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any, Literal

import msgspec

Value = str | float | bool | None
Operator = Literal[
    "string_equals",
    "string_not_equals",
    "number_equals",
    "number_not_equals",
    "exists",
    "not_exists",
    "is_true",
    "is_false",
    "<",
    "<=",
    ">",
    ">=",
]
Function = Literal["contains", "starts_with", "ends_with"]
_TEXT_FIELDS = ("type", "event", "name", "userId")


class FqlError(ValueError):
    """A subscription that does not parse; the message says where."""


class Compare(msgspec.Struct, frozen=True):
    path: tuple[str, ...]
    op: Operator
    value: Value = None


class Call(msgspec.Struct, frozen=True):
    function: Function
    path: tuple[str, ...]
    argument: str
    negated: bool = False  # !contains, !match: still false unless the field is a string


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
      | (?P<word>(?:[A-Za-z_$]|\\.)(?:[A-Za-z0-9_$\-]|\\.)*(?:\.(?:[A-Za-z0-9_$\-]|\\.)+)*)
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
            found = node.argument in value
        elif node.function == "starts_with":
            found = value.startswith(node.argument)
        else:
            found = value.endswith(node.argument)
        return found != node.negated
    if isinstance(node, Not):
        return not matches(node.operand, message)
    if isinstance(node, Both):
        return matches(node.left, message) and matches(node.right, message)
    return matches(node.left, message) or matches(node.right, message)


def to_sql(node: Node, column: str = "payload") -> tuple[str, list[Any]]:
    """A SQL condition on the JSON text in `column` (SQLite JSON functions), with parameters;
    true exactly when `matches` is."""
    from cdpd.mapping import fql_sql

    return fql_sql.to_sql(node, column)


# -- evaluation ----------------------------------------------------------------------------------


class _Missing:
    pass


_MISSING: Any = _Missing()


def _lookup(message: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = message
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compare(actual: Any, op: Operator, expected: Any) -> bool:
    if op == "string_equals":
        return isinstance(actual, str) and actual == expected
    if op == "string_not_equals":
        return not (isinstance(actual, str) and actual == expected)
    if op == "exists":
        return actual is not _MISSING and actual is not None
    if op == "not_exists":
        return actual is _MISSING or actual is None
    if op in ("is_true", "is_false"):
        return isinstance(actual, bool) and actual is (op == "is_true")
    if not _is_number(actual) or math.isnan(expected):
        return False
    if op == "number_equals":
        return bool(actual == expected)
    if op == "number_not_equals":
        return bool(actual != expected)
    return bool(_ORDERINGS[op](actual, expected))


_ORDERINGS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def js_number(value: Value) -> float:
    """Number(v) for the value Segment's parser keeps: `null` stays the word "null" (NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    if text == "":
        return 0.0
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", text, re.IGNORECASE):
        return float(text)
    return math.nan


def js_text(value: Value) -> str:
    """JavaScript's String(value) for an FQL value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def comparison(path: tuple[str, ...], op: str, value: Value) -> Compare:
    """The comparison Segment's parser makes of `path op value` (see the module docstring)."""
    root = path[0]
    if op in ("<", "<=", ">", ">="):
        if root in _TEXT_FIELDS:  # Segment keeps their values as text: true is "true", NaN
            value = js_text(value)
        return Compare(path, op, js_number(value))  # type: ignore[arg-type]
    equal = op == "="
    if root in ("type", "event") or (root in _TEXT_FIELDS and value is not None):
        if root == "userId" and isinstance(value, bool) and equal:
            return Compare(path, "is_true" if value else "is_false")
        return Compare(path, "string_equals" if equal else "string_not_equals", js_text(value))
    if value is None:
        return Compare(path, "not_exists" if equal else "exists")
    if isinstance(value, bool) and equal:
        return Compare(path, "is_true" if value else "is_false")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Compare(path, "number_equals" if equal else "number_not_equals", float(value))
    return Compare(path, "string_equals" if equal else "string_not_equals", js_text(value))


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
        """Items joined by and/or: as in Segment's parser, the last joiner counts for all."""
        items = [self._negation()]
        joiner = "and"
        while (word := self._accept_word("and") or self._accept_word("or")) is not None:
            joiner = word
            items.append(self._negation())
        kind = Both if joiner == "and" else Either
        node = items[0]
        for item in items[1:]:
            node = kind(node, item)
        return node

    def expect_end(self) -> None:
        if self._at < len(self._tokens):
            token = self._tokens[self._at]
            raise FqlError(f"unexpected {token.text!r} at column {token.column}")

    def _negation(self) -> Node:
        if self._accept_word("not") is not None or self._accept_op("!"):
            if self._at_function():
                return self._call(self._next("a function"), negated=True)
            return Not(self._negation())
        return self._primary()

    def _primary(self) -> Node:
        if self._accept_op("("):
            node = self.expression()
            self._expect_op(")")
            return node
        if self._at_function():
            return self._call(self._next("a function"), negated=False)
        path = self._path(self._next("a field, contains(...) or match(...)"))
        operator = self._next("an operator (=, !=, <, <=, >, >=)")
        if operator.text not in ("=", "!=", "<", "<=", ">", ">="):
            raise FqlError(f"expected an operator at column {operator.column}")
        return comparison(path, operator.text, self._value())

    def _at_function(self) -> bool:
        rest = self._tokens[self._at : self._at + 2]
        return (
            len(rest) == 2
            and rest[0].kind == "word"
            and rest[0].text in ("contains", "match")
            and rest[1].text == "("
        )

    def _call(self, name: _Token, negated: bool) -> Call:
        self._expect_op("(")
        path = self._path(self._next("a field"))
        self._expect_op(",")
        token = self._tokens[self._at] if self._at < len(self._tokens) else None
        if token is None or token.kind not in ("string", "number", "word"):
            raise FqlError(f"{name.text}() takes a string at {_place(token)}")
        text = js_text(self._value())
        self._expect_op(")")
        if name.text == "contains":
            return Call("contains", path, text, negated)
        if token.kind == "string" and text.endswith("*"):
            return Call("starts_with", path, text[:-1], negated)
        return Call("ends_with", path, text[1:], negated)  # Segment drops the first character

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
        return tuple(re.sub(r"\\(.)", r"\1", token.text).split("."))

    def _next(self, wanted: str) -> _Token:
        if self._at >= len(self._tokens):
            raise FqlError(f"expected {wanted} at the end")
        token = self._tokens[self._at]
        self._at += 1
        return token

    def _accept_word(self, word: str) -> str | None:
        if self._at < len(self._tokens):
            token = self._tokens[self._at]
            if token.kind == "word" and token.text == word:
                self._at += 1
                return word
        return None

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


def _place(token: _Token | None) -> str:
    return "the end" if token is None else f"column {token.column}"


def _unquote(text: str) -> str:
    return str(msgspec.json.decode(text.encode()))
