"""Segment's query language as text: tokens, then a tree of calls, comparisons and junctions.

The grammar, lowest precedence first (`AND` binds tighter than `OR`; `NOT`, `ANY` and `ALL`
bind tightest and apply to the comparison that follows them):

    query      := or EOF
    or         := and ("OR" and)*
    and        := unary ("AND" unary)*
    unary      := ("NOT" | "ANY" | "ALL") unary | comparison
    comparison := chain (("=" | "==" | "!=" | ">" | ">=" | "<" | "<=") chain)?
    chain      := primary ("." call)*
    primary    := "(" or ")" | "{" or "}" | call | literal
    call       := NAME "(" [argument ("," argument)*] ")"
    argument   := NAME ":" value ("," value)* | "{" NAME ":" value ("," value)* "}"
                | NUMBER UNIT | or ["as" NAME] | "[" value ("," value)* "]"

A literal is a quoted string, a number, `true`/`false`/`null`, or a bare ISO date or
timestamp (`2023-12-07T18:50:00Z`). This module only builds the tree; what each call means
and where it may stand is checked by `plan.py`, so both kinds of error carry a position.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec


class QueryError(ValueError):
    """A query that does not parse or does not make sense; `offset` is the character at fault."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def render(self, text: str) -> str:
        """`line 1, column 12: <message>` and the line with a caret under the character."""
        offset = min(max(self.offset, 0), len(text))
        line_start = text.rfind("\n", 0, offset) + 1
        line_end = text.find("\n", offset)
        line_end = len(text) if line_end == -1 else line_end
        line_no = text.count("\n", 0, offset) + 1
        column = offset - line_start + 1
        source_line = text[line_start:line_end]
        return (
            f"line {line_no}, column {column}: {self.message}\n"
            f"    {source_line}\n    {' ' * (column - 1)}^"
        )


class Token(msgspec.Struct, frozen=True):
    kind: str  # name, string, number, timestamp, op, punct, keyword, eof
    text: str
    offset: int
    value: Any = None


class Literal(msgspec.Struct, frozen=True):
    value: Any
    offset: int


class Duration(msgspec.Struct, frozen=True):
    amount: int
    unit: str  # "hours" or "days"
    offset: int

    @property
    def hours(self) -> int:
        return self.amount * (24 if self.unit == "days" else 1)


class Cast(msgspec.Struct, frozen=True):
    operand: Node
    type_name: str
    offset: int


class ValueList(msgspec.Struct, frozen=True):
    items: tuple[Node, ...]
    offset: int


class Named(msgspec.Struct, frozen=True):
    name: str
    value: Node
    offset: int


class Call(msgspec.Struct, frozen=True):
    name: str
    args: tuple[Node, ...]
    offset: int
    receiver: Node | None = None  # what the call is chained on, for `a.b()`


class Compare(msgspec.Struct, frozen=True):
    op: str
    left: Node
    right: Node
    offset: int


class Junction(msgspec.Struct, frozen=True):
    op: str  # AND, OR
    items: tuple[Node, ...]
    offset: int


class Prefix(msgspec.Struct, frozen=True):
    op: str  # NOT, ANY, ALL
    operand: Node
    offset: int


Node = Literal | Duration | Cast | ValueList | Named | Call | Compare | Junction | Prefix

KEYWORDS = {"AND", "OR", "NOT", "ANY", "ALL"}
UNITS = {"hour": "hours", "hours": "hours", "day": "days", "days": "days"}
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<timestamp>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|>=|<=|=|>|<)
  | (?P<punct>[().,:{}\[\]])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position] in "'\"":
                raise QueryError("this string is never closed", position)
            raise QueryError(f"unexpected character {text[position]!r}", position)
        kind = match.lastgroup or ""
        raw = match.group()
        if kind != "space":
            tokens.append(_token(kind, raw, position))
        position = match.end()
    tokens.append(Token("eof", "", len(text)))
    return tokens


def _token(kind: str, raw: str, offset: int) -> Token:
    if kind == "string":
        return Token(kind, raw, offset, _ESCAPE.sub(r"\1", raw[1:-1]))
    if kind == "number":
        is_float = any(c in raw for c in ".eE")
        return Token(kind, raw, offset, float(raw) if is_float else int(raw))
    if kind == "timestamp":
        return Token(kind, raw, offset, raw)
    if kind == "name" and raw.upper() in KEYWORDS:
        return Token("keyword", raw, offset, raw.upper())
    return Token(kind, raw, offset)


def parse(text: str) -> Node:
    """The tree of a query; raises QueryError pointing at the first character that is wrong."""
    parser = _Parser(tokenize(text))
    if parser.peek().kind == "eof":
        raise QueryError("the query is empty", 0)
    node = parser.parse_or()
    parser.expect_end()
    return node


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.peek()
        self.index += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        token = self.peek()
        if token.kind != kind:
            return False
        if text is None:
            return True
        return token.value == text if kind == "keyword" else token.text == text

    def expect(self, kind: str, text: str, what: str) -> Token:
        if not self.at(kind, text):
            raise self.unexpected(f"expected {what}")
        return self.take()

    def unexpected(self, expected: str) -> QueryError:
        token = self.peek()
        found = "the end of the query" if token.kind == "eof" else repr(token.text)
        return QueryError(f"{expected}, found {found}", token.offset)

    def expect_end(self) -> None:
        if not self.at("eof"):
            hint = "AND, OR or the end of the query"
            if self.at("punct", ")") or self.at("punct", "}"):
                raise QueryError(f"{self.peek().text!r} closes nothing", self.peek().offset)
            raise self.unexpected(f"expected {hint}")

    def parse_or(self) -> Node:
        return self._junction("OR", self.parse_and)

    def parse_and(self) -> Node:
        return self._junction("AND", self.parse_unary)

    def _junction(self, op: str, operand: Callable[[], Node]) -> Node:
        first = operand()
        items = [first]
        while self.at("keyword", op):
            self.take()
            items.append(operand())
        if len(items) == 1:
            return first
        return Junction(op, tuple(items), _offset(first))

    def parse_unary(self) -> Node:
        if self.at("keyword", "NOT") or self.at("keyword", "ANY") or self.at("keyword", "ALL"):
            token = self.take()
            return Prefix(token.value, self.parse_unary(), token.offset)
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        left = self.parse_chain()
        if self.at("op"):
            token = self.take()
            right = self.parse_chain()
            op = "=" if token.text == "==" else token.text
            return Compare(op, left, right, token.offset)
        return left

    def parse_chain(self) -> Node:
        node = self.parse_primary()
        while self.at("punct", "."):
            self.take()
            if not self.at("name"):
                raise self.unexpected("expected a function name after '.'")
            node = self.parse_call(receiver=node)
        return node

    def parse_primary(self) -> Node:
        token = self.peek()
        if self.at("punct", "(") or self.at("punct", "{"):
            closing = ")" if token.text == "(" else "}"
            self.take()
            node = self.parse_or()
            self.expect("punct", closing, f"{closing!r} to close the {token.text!r}")
            return node
        if token.kind == "name":
            if token.text in ("true", "false", "null"):
                self.take()
                return Literal(
                    {"true": True, "false": False, "null": None}[token.text], token.offset
                )
            return self.parse_call(receiver=None)
        if token.kind in ("string", "number", "timestamp"):
            self.take()
            return Literal(token.value, token.offset)
        if token.kind == "keyword":
            raise QueryError(
                f"{token.text} joins two conditions; a condition is missing before it",
                token.offset,
            )
        raise self.unexpected("expected a function such as event(...) or trait(...), or a value")

    def parse_call(self, receiver: Node | None) -> Call:
        name = self.take()
        if not self.at("punct", "("):
            raise self.unexpected(f"expected '(' after {name.text}")
        self.take()
        args: list[Node] = []
        if not self.at("punct", ")"):
            args.extend(self.parse_argument())
            while self.at("punct", ","):
                self.take()
                args.extend(self.parse_argument())
        self.expect("punct", ")", f"',' or ')' to close {name.text}(")
        return Call(name.text, tuple(args), name.offset, receiver)

    def parse_argument(self) -> list[Node]:
        if self.at("name") and self.peek(1).kind == "punct" and self.peek(1).text == ":":
            return [self.parse_named(closing=")")]
        if (
            self.at("punct", "{")
            and self.peek(1).kind == "name"
            and self.peek(2).kind == "punct"
            and self.peek(2).text == ":"
        ):
            self.take()
            named = self.parse_named(closing="}")
            self.expect("punct", "}", "'}'")
            return [named]
        if self.at("number") and self.peek(1).kind == "name":
            if self.peek(1).text not in UNITS:
                unit = self.peek(1)
                raise QueryError(
                    f"unknown time unit {unit.text!r} (expected hours or days)", unit.offset
                )
            return [self.parse_duration()]
        if self.at("punct", "["):
            return [self.parse_list()]
        node = self.parse_or()
        if self.at("name", "as"):
            token = self.take()
            if not self.at("name"):
                raise self.unexpected("expected a type (number, string or array) after 'as'")
            node = Cast(node, self.take().text, token.offset)
        return [node]

    def parse_named(self, closing: str) -> Named:
        name = self.take()
        self.take()  # the ':'
        if self.at("number") and self.peek(1).kind == "name" and self.peek(1).text in UNITS:
            return Named(name.text, self.parse_duration(), name.offset)
        if self.at("punct", "["):
            return Named(name.text, self.parse_list(), name.offset)
        first = self.parse_value()
        items = [first]
        # `exclude: 'a', 'b'` lists values up to the closing bracket; a duration stays one.
        while self.at("punct", ",") and self.peek(1).kind in ("string", "number", "timestamp"):
            self.take()
            items.append(self.parse_value())
        if len(items) == 1 and closing == ")" and name.text not in ("exclude", "include"):
            return Named(name.text, first, name.offset)
        return Named(name.text, ValueList(tuple(items), _offset(first)), name.offset)

    def parse_list(self) -> ValueList:
        start = self.take()
        items: list[Node] = []
        if not self.at("punct", "]"):
            items.append(self.parse_value())
            while self.at("punct", ","):
                self.take()
                items.append(self.parse_value())
        self.expect("punct", "]", "',' or ']' to close the list")
        return ValueList(tuple(items), start.offset)

    def parse_value(self) -> Node:
        token = self.peek()
        if token.kind in ("string", "number", "timestamp"):
            self.take()
            return Literal(token.value, token.offset)
        raise self.unexpected("expected a quoted string, a number or a timestamp")

    def parse_duration(self) -> Duration:
        amount = self.take()
        unit = self.take()
        if not isinstance(amount.value, int) or amount.value < 0:
            raise QueryError("a duration is a whole number of hours or days", amount.offset)
        return Duration(amount.value, UNITS[unit.text], amount.offset)


def _offset(node: Node) -> int:
    if isinstance(node, Call) and node.receiver is not None:
        return _offset(node.receiver)
    return node.offset
