"""Segment's warehouse layout for messages: which tables each lands in, and its row there. Pure.

A message becomes rows of plain JSON scalars keyed by column name: the standard columns, then
`context` flattened as `context_*`, then properties or traits flattened unprefixed (nested
objects joined with `_`, the whole path snake-cased); arrays become JSON text and nulls make no
column. A property or trait named like a standard column is dropped, as Segment does, and
counted; keys that share a column keep one value (`_collision_rank`), and the others, like a
property that would replace a context column, go to the discards. `users` and `accounts`
rows are merged per id (a later message's non-null values win); every other table keeps the
first row per id.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec

from cdpd.warehouse import naming

Row = dict[str, Any]
TableKey = tuple[str, str]  # (schema, table)
UPSERT_TABLES = frozenset({"users", "accounts"})
_COMMON = frozenset(
    {"id", "anonymous_id", "user_id", "received_at", "sent_at", "timestamp"}
    | {"original_timestamp", "uuid_ts", "loaded_at"}
)
_OBJECT = frozenset({"id", "received_at", "uuid_ts", "loaded_at"})
# The standard columns of each table: a property or trait with one of these names is dropped.
RESERVED_COLUMNS = {
    "identifies": _COMMON,
    "groups": frozenset({*_COMMON, "group_id"}),
    "pages": frozenset({*_COMMON, "name"}),
    "screens": frozenset({*_COMMON, "name"}),
    "aliases": frozenset({*_COMMON, "previous_id"}),
    "users": _OBJECT,
    "accounts": _OBJECT,
}
# The table of each message type (a track also has a row in its event's table).
KIND_TABLES = {
    "track": "tracks",
    "identify": "identifies",
    "group": "groups",
    "page": "pages",
    "screen": "screens",
    "alias": "aliases",
}
EVENT_RESERVED_COLUMNS = frozenset({*_COMMON, "event", "event_text"})  # tracks and event tables
_STANDARD_FIELDS = (
    ("anonymous_id", "anonymousId"),
    ("user_id", "userId"),
    ("received_at", "receivedAt"),
    ("sent_at", "sentAt"),
    ("timestamp", "timestamp"),
    ("original_timestamp", "originalTimestamp"),
)
# Objects nested deeper than this are stored as JSON text rather than flattened further.
MAX_FLATTEN_DEPTH = 10

_encoder = msgspec.json.Encoder()


class Discard(msgspec.Struct, frozen=True, gc=False):
    """A value that could not be loaded into its column; kept in the discards table."""

    schema: str
    table: str
    row_id: str
    column: str
    value: str  # JSON text
    reason: str
    received_at: str | None


class UnreadableMessage(msgspec.Struct, frozen=True):
    """The outbox columns of a message whose payload cannot be decoded."""

    message_id: str
    type: str
    event: str | None
    received_at: str
    payload: str


class MappedBatch(msgspec.Struct):
    """Messages turned into rows: `rows[(schema, table)][id]` is the row for that id."""

    rows: dict[TableKey, dict[str, Row]]
    discards: list[Discard]
    dropped: Counter[tuple[str, str, str]]  # (schema, table, column) -> reserved-name drops
    long_names: dict[str, str]  # a snake-cased name over the length limit -> what it became
    # Whether some message holds text with U+0000, which no warehouse column takes (see `plan`).
    nul_text: bool = False


@functools.lru_cache(maxsize=65536)
def _column(raw_path: str) -> tuple[str, str | None]:
    """A path's column, and its snake-cased full name when the column had to be cut short."""
    column = naming.column_name(raw_path)
    return column, _long_name(raw_path, column)


@functools.lru_cache(maxsize=4096)
def _long_name(raw_name: str, name: str) -> str | None:
    if len(name) == naming.MAX_NAME_BYTES and len(naming.snakecase(raw_name)) > len(name):
        return naming.snakecase(raw_name)
    return None


@functools.lru_cache(maxsize=4096)
def _event_table(event: str) -> str:
    return naming.event_table_name(event)


@functools.lru_cache(maxsize=1024)
def _schema(source: str) -> str:
    return naming.schema_name(source)


class Mapper:
    """Collects the rows of a batch of messages, in outbox order."""

    def __init__(self, *, loaded_at: str) -> None:
        self._loaded_at = loaded_at
        self._batch = MappedBatch(rows={}, discards=[], dropped=Counter(), long_names={})
        # prefix -> key -> (column, long name): the batch's paths, without joining them again
        self._names: dict[str, dict[str, tuple[str, str | None]]] = {}

    def batch(self) -> MappedBatch:
        return self._batch

    def add(self, source: str, message: dict[str, Any], segment_id: str | None = None) -> None:
        schema = _schema(source)
        row_id = message.get("messageId")
        if not schema or not isinstance(row_id, str):
            return
        standard = self._standard_columns(message, row_id)
        if segment_id is not None:  # the profile identity resolution gave it ([identity])
            standard["segment_id"] = segment_id
        kind = message.get("type")
        context_table = KIND_TABLES.get(str(kind), "tracks")  # where a context value is discarded
        self._flatten_into(standard, message.get("context"), "context_", (schema, context_table))
        if kind == "track":
            self._track(schema, message, standard)
        elif kind == "identify":
            self._with_object(schema, "identifies", "users", message, standard, "userId")
        elif kind == "group":
            standard["group_id"] = message.get("groupId")
            self._with_object(schema, "groups", "accounts", message, standard, "groupId")
        elif kind in ("page", "screen"):
            _set(standard, "name", message.get("name"))
            self._event_row(schema, kind + "s", standard, message.get("properties"))
        elif kind == "alias":
            standard["previous_id"] = message.get("previousId")
            self._insert(schema, "aliases", standard)

    def add_unreadable(self, source: str, stored: UnreadableMessage, error: str) -> None:
        """A message whose stored JSON cannot be decoded (a number out of range, stored by an
        older cdpd): the whole of it goes to the discards table, in the table it was for."""
        schema = _schema(source)
        if not schema:
            return
        table = KIND_TABLES.get(stored.type, "tracks")
        if stored.type == "track":
            table = _event_table(stored.event or "") or table
        self._batch.discards.append(
            Discard(
                schema=schema,
                table=table,
                row_id=stored.message_id,
                column="",
                value=stored.payload,
                reason=f"unreadable_message: {error}",
                received_at=stored.received_at,
            )
        )

    def _standard_columns(self, message: dict[str, Any], row_id: str) -> Row:
        row: Row = {"id": row_id}
        for column, field in _STANDARD_FIELDS:
            value = message.get(field)
            if value is not None:
                row[column] = value
        row["uuid_ts"] = row["loaded_at"] = self._loaded_at
        return row

    def _track(self, schema: str, message: dict[str, Any], standard: Row) -> None:
        event = str(message.get("event") or "")
        table = _event_table(event)
        long_name = _long_name(event, table)
        if long_name is not None:
            self._batch.long_names[long_name] = table
        standard["event"] = table
        standard["event_text"] = event
        self._insert(schema, "tracks", standard)
        properties = message.get("properties")
        if table:
            self._event_row(schema, table, dict(standard), properties)
        elif properties:
            self._discard(schema, "tracks", standard, "properties", properties, "no_table_name")

    def _with_object(
        self,
        schema: str,
        event_table: str,
        object_table: str,
        message: dict[str, Any],
        standard: Row,
        object_id_field: str,
    ) -> None:
        traits = message.get("traits")
        self._event_row(schema, event_table, dict(standard), traits)
        object_id = message.get(object_id_field)
        if object_id is None:
            return
        row: Row = {"id": str(object_id)}
        _set(row, "received_at", standard.get("received_at"))
        row["uuid_ts"] = row["loaded_at"] = self._loaded_at
        self._flatten_into(row, traits, "", (schema, object_table))
        self._merge(schema, object_table, row)

    def _event_row(self, schema: str, table: str, row: Row, properties: Any) -> None:
        self._flatten_into(row, properties, "", (schema, table))
        self._insert(schema, table, row)

    def _insert(self, schema: str, table: str, row: Row) -> None:
        rows = self._batch.rows.setdefault((schema, table), {})
        rows.setdefault(row["id"], row)  # a messageId seen before: the first copy stays

    def _merge(self, schema: str, table: str, row: Row) -> None:
        rows = self._batch.rows.setdefault((schema, table), {})
        existing = rows.get(row["id"])
        if existing is None:
            rows[row["id"]] = row
        else:
            existing.update(row)

    def _flatten_into(self, row: Row, obj: Any, prefix: str, where: TableKey) -> None:
        """Add `obj`'s leaves to `row` as columns. A column reserved for the table is not
        replaced (the value is dropped, and counted); keys of `obj` that share a column, or take
        one `row` already has, keep one value by `_collision_rank` and discard the others."""
        if type(obj) is not dict:
            return
        columns_before = len(row)
        collided: set[str] = set()
        self._add_leaves(row, obj, prefix, where, 0, collided)
        for column in collided:
            self._settle(row, obj, prefix, where, column, columns_before)

    def _add_leaves(
        self,
        row: Row,
        obj: dict[str, Any],
        prefix: str,
        where: TableKey,
        depth: int,
        collided: set[str],
    ) -> None:
        reserved = RESERVED_COLUMNS.get(where[1], EVENT_RESERVED_COLUMNS)
        names = self._names.get(prefix)
        if names is None:
            names = self._names[prefix] = {}
        for key, value in obj.items():
            if value is None:
                continue
            kind = type(value)
            if kind is dict and depth < MAX_FLATTEN_DEPTH:
                self._add_leaves(row, value, prefix + key + "_", where, depth + 1, collided)
                continue
            named = names.get(key)
            if named is None:
                named = names[key] = _column(prefix + key)
            column, long_name = named
            if not column:
                self._discard(where[0], where[1], row, prefix + key, value, "no_column_name")
            elif column in reserved:
                self._batch.dropped[(where[0], where[1], column)] += 1
            elif column in row:
                collided.add(column)
            else:
                if kind is list or kind is dict:
                    value = _encoder.encode(value).decode()
                row[column] = value
                if long_name is not None:
                    self._batch.long_names[long_name] = column

    def _settle(
        self, row: Row, obj: dict[str, Any], prefix: str, where: TableKey, column: str, before: int
    ) -> None:
        """Keep one value for a column that several keys of `obj` map to: a column `row` had
        before (a `context_*` one, for a property) keeps its value; otherwise the key ranked
        first by `_collision_rank` wins. The other values go to the discards table."""
        shown = "context." if prefix else ""  # a key as people write it: `address.city`
        leaves = sorted(
            (_collision_rank(column, path, segments), shown + ".".join(segments), value)
            for path, segments, value in _leaves_of(obj, prefix, column, self._column_of)
        )
        if list(row).index(column) < before:
            winner = "the context's value"  # properties and traits come after context
            losers = leaves
        else:
            (_, winner, value), *losers = leaves
            row[column] = _encoder.encode(value).decode() if type(value) in (list, dict) else value
        for _, path, value in losers:
            reason = f"name_collision: {column} holds {winner}"
            self._discard(where[0], where[1], row, path, value, reason)

    def _column_of(self, prefix: str, key: str) -> str:
        names = self._names.setdefault(prefix, {})
        named = names.get(key)
        if named is None:
            named = names[key] = _column(prefix + key)
        return named[0]

    def _discard(
        self, schema: str, table: str, row: Row, column: str, value: Any, reason: str
    ) -> None:
        self._batch.discards.append(
            Discard(
                schema=schema,
                table=table,
                row_id=row["id"],
                column=column,
                value=_encoder.encode(value).decode(),
                reason=reason,
                received_at=row.get("received_at"),
            )
        )


def _leaves_of(
    obj: dict[str, Any],
    prefix: str,
    column: str,
    column_of: Callable[[str, str], str],
    segments: tuple[str, ...] = (),
) -> list[tuple[str, tuple[str, ...], Any]]:
    """The leaves of `obj` (as `_add_leaves` walks it) whose column is `column`: each one's
    path (`prefix` plus its keys joined with `_`), its keys, and its value."""
    found = []
    for key, value in obj.items():
        if value is None:
            continue
        path = (*segments, key)
        if type(value) is dict and len(segments) < MAX_FLATTEN_DEPTH:
            found += _leaves_of(value, prefix + key + "_", column, column_of, path)
        elif column_of(prefix, key) == column:
            found.append((prefix + key, path, value))
    return found


def _collision_rank(column: str, path: str, segments: tuple[str, ...]) -> tuple[Any, ...]:
    """Which of several keys sharing a column keeps it, first ranked first: the key written
    exactly as its column (`order_id`), then the least nested, then the first path in
    code-point order (`ORDER_ID` before `Order Id` before `orderId`), then the first keys."""
    return (path != column, len(segments), path, segments)


def _set(row: Row, column: str, value: Any) -> None:
    if value is not None:
        row[column] = value
