"""What a batch does to a warehouse: new tables and columns, the values to write, the discards.
Pure: it takes the mapped rows and the columns the warehouse already has.

New columns are typed by `values.infer_type` (the last value in the batch decides), except the
standard id and timestamp columns, whose types are fixed. A table never grows past
`max_columns`: values of the columns that did not fit go to the discards table, as do values
that do not fit their column's type (see `values`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import repeat
from typing import Any

import msgspec

from cdpd.warehouse.mapping import UPSERT_TABLES, Discard, MappedBatch, Row, TableKey
from cdpd.warehouse.values import (
    INT64_MAX,
    INT64_MIN,
    UNLOADABLE,
    ColumnType,
    Converter,
    converters,
    infer_type,
    parse_timestamps,
)

Catalog = dict[TableKey, dict[str, ColumnType]]

NUL = "\x00"
UNSTORABLE_TEXT = "unstorable_text: U+0000"
UNSTORABLE_ROW = "unstorable_text: U+0000 in the id; the row is not loaded"

FIXED_TYPES = {
    "id": ColumnType.STRING,
    "anonymous_id": ColumnType.STRING,
    "user_id": ColumnType.STRING,
    "received_at": ColumnType.TIMESTAMP,
    "sent_at": ColumnType.TIMESTAMP,
    "timestamp": ColumnType.TIMESTAMP,
    "original_timestamp": ColumnType.TIMESTAMP,
    "uuid_ts": ColumnType.TIMESTAMP,
    "loaded_at": ColumnType.TIMESTAMP,
}


class TablePlan(msgspec.Struct):
    schema: str
    table: str
    new_table: bool
    new_columns: list[tuple[str, ColumnType]]  # to create, in order; "id" first in a new table
    columns: list[str]  # the columns the rows fill, in order; "id" first
    types: list[ColumnType]  # the type of each of `columns`
    # The rows a column at a time: values[i][r] is row r's value of columns[i]. Rows as tuples
    # are made only while they are written, so a batch never holds them all at once.
    values: list[list[Any]]
    upsert: bool  # merge into the row with the same id, rather than skip it

    def ids(self) -> list[Any]:
        return self.values[0] if self.values else []

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """The rows as tuples in `columns` order, made one at a time."""
        return zip(*self.values, strict=True)


class LoadPlan(msgspec.Struct):
    tables: list[TablePlan]
    discards: list[Discard]
    refused_columns: dict[TableKey, list[str]]  # columns that did not fit under max_columns


def plan_load(
    batch: MappedBatch,
    catalog: Catalog,
    *,
    max_columns: int,
    encode_timestamp: Callable[[datetime], Any],
) -> LoadPlan:
    convert = converters(encode_timestamp)
    stamps = _Timestamps(encode_timestamp)
    plan = LoadPlan(tables=[], discards=list(batch.discards), refused_columns={})
    if batch.nul_text:
        plan.discards = [_storable_discard(d) for d in plan.discards]
    for key, rows_by_id in batch.rows.items():
        rows = list(rows_by_id.values())
        if batch.nul_text:
            rows = _without_nul(key, rows, plan.discards)
            if not rows:
                continue
        existing = catalog.get(key, {})
        table_plan, refused = _plan_table(key, rows, existing, max_columns)
        table_plan.values = _values(table_plan, rows, convert, stamps, plan.discards)
        plan.discards.extend(_refused(table_plan, rows, refused))
        plan.tables.append(table_plan)
        if refused:
            plan.refused_columns[key] = sorted(refused)
    return plan


def _without_nul(key: TableKey, rows: list[Row], discards: list[Discard]) -> list[Row]:
    """The rows with no text holding U+0000, which PostgreSQL cannot store (one rule for both
    warehouses, so that they hold the same rows). Such a value becomes no value, and goes to
    the discards table; a row whose id holds one is not loaded, and goes there whole."""
    kept = []
    for row in rows:
        bad = [c for c, v in row.items() if type(v) is str and NUL in v]
        if not bad:
            kept.append(row)
        elif "id" in bad:
            discards.append(
                Discard(
                    schema=key[0],
                    table=key[1],
                    row_id=_json(row["id"]),
                    column="id",
                    value=_json(row),
                    reason=UNSTORABLE_ROW,
                    received_at=_storable(row.get("received_at")),
                )
            )
        else:
            row = dict(row)  # a copy: the mapped batch stays as it was
            for column in bad:
                discards.append(
                    Discard(
                        schema=key[0],
                        table=key[1],
                        row_id=row["id"],
                        column=column,
                        value=_json(row.pop(column)),
                        reason=UNSTORABLE_TEXT,
                        received_at=_storable(row.get("received_at")),
                    )
                )
            kept.append(row)
    return kept


def _storable_discard(discard: Discard) -> Discard:
    """A discard whose names (a property key, say) hold no U+0000: escaped as in JSON."""
    return msgspec.structs.replace(
        discard,
        row_id=_storable(discard.row_id),
        column=_storable(discard.column),
        reason=_storable(discard.reason),
        received_at=_storable(discard.received_at),
    )


def _storable(text: str | None) -> str | None:
    return text.replace(NUL, "\\u0000") if text is not None and NUL in text else text


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def catalog_after(catalog: Catalog, plan: LoadPlan) -> Catalog:
    """The tables and columns a warehouse with `catalog` has once `plan` is applied."""
    after = {key: dict(columns) for key, columns in catalog.items()}
    for table in plan.tables:
        after.setdefault((table.schema, table.table), {}).update(table.new_columns)
    return after


def _plan_table(
    key: TableKey, rows: list[Row], existing: dict[str, ColumnType], max_columns: int
) -> tuple[TablePlan, set[str]]:
    new_types: dict[str, ColumnType] = {}
    seen: dict[str, None] = {}  # every column of the batch, in first-seen order
    for row in rows:
        if seen.keys() >= row.keys():
            continue
        for column in row:
            seen.setdefault(column)
            if column not in existing:
                new_types[column] = FIXED_TYPES.get(column) or ColumnType.STRING
    # The last occurrence in the batch decides a new column's type.
    undecided = new_types.keys() - FIXED_TYPES.keys()
    for row in reversed(rows):
        if not undecided:
            break
        found = undecided.intersection(row)
        for column in found:
            new_types[column] = infer_type(row[column])
        undecided -= found
    room = max(0, max_columns - len(existing))
    accepted = list(new_types)[:room]
    refused = set(list(new_types)[room:])
    types = {**existing, **{c: new_types[c] for c in accepted}}
    columns = [c for c in seen if c in types]
    plan = TablePlan(
        schema=key[0],
        table=key[1],
        new_table=not existing,
        new_columns=[(c, new_types[c]) for c in accepted],
        columns=columns,
        types=[types[c] for c in columns],
        values=[],
        upsert=key[1] in UPSERT_TABLES,
    )
    return plan, refused


def _values(
    plan: TablePlan,
    rows: list[Row],
    convert: dict[ColumnType, Converter],
    stamps: _Timestamps,
    discards: list[Discard],
) -> list[list[Any]]:
    """The rows' values a column at a time, in `plan.columns` order. A column whose values all
    have its type already (the usual case) is taken as it is."""
    get = dict.get
    by_column = []
    for column, column_type in zip(plan.columns, plan.types, strict=True):
        values = list(map(get, rows, repeat(column)))
        if not _fits(values, column_type):
            converted = None
            if column_type is ColumnType.TIMESTAMP:
                converted = stamps.column(values)
            if converted is None:
                converted = _converted(plan, column, column_type, rows, values, convert, discards)
            values = converted
        by_column.append(values)
    return by_column


_NONE = type(None)
_NATIVE = {
    ColumnType.STRING: frozenset({str, _NONE}),
    ColumnType.INTEGER: frozenset({int, _NONE}),
    ColumnType.FLOAT: frozenset({float, _NONE}),
    ColumnType.BOOLEAN: frozenset({bool, _NONE}),
    ColumnType.TIMESTAMP: frozenset(),  # always converted: text to the sink's timestamp
}
_MISSING = object()


def _fits(values: list[Any], column_type: ColumnType) -> bool:
    """Whether every value is already what the sink takes for `column_type`."""
    if not set(map(type, values)) <= _NATIVE[column_type]:
        return False
    if column_type is ColumnType.INTEGER:
        present = [v for v in values if v is not None]
        return not present or (min(present) >= INT64_MIN and max(present) <= INT64_MAX)
    return True


class _Timestamps:
    """Timestamp text -> the sink's form, kept for a whole batch: tables repeat the same times."""

    def __init__(self, encode_timestamp: Callable[[datetime], Any]) -> None:
        self._encode = encode_timestamp
        self._known: dict[Any, Any] = {None: None}

    def column(self, values: list[Any]) -> list[Any] | None:
        """A timestamp column's values converted; None if one of them is not a time."""
        known = self._known
        try:
            encoded = list(map(known.get, values, repeat(_MISSING)))
        except TypeError:  # an unhashable value: not a time
            return None
        if _MISSING in encoded:
            new = list({v for v, e in zip(values, encoded, strict=True) if e is _MISSING})
            known.update(zip(new, self._converted(new), strict=True))
            encoded = list(map(known.__getitem__, values))
        if UNLOADABLE in encoded:
            return None
        return encoded

    def _converted(self, values: list[Any]) -> list[Any]:
        encode = self._encode
        return [UNLOADABLE if m is None else encode(m) for m in parse_timestamps(values)]


def _converted(
    plan: TablePlan,
    column: str,
    column_type: ColumnType,
    rows: list[Row],
    values: list[Any],
    convert: dict[ColumnType, Converter],
    discards: list[Discard],
) -> list[Any]:
    converter = convert[column_type]
    out = []
    for row, value in zip(rows, values, strict=True):
        if value is not None:
            value = converter(value)
            if value is UNLOADABLE:
                discards.append(_discard(plan, row, column, "type_conflict", column_type))
                value = None
        out.append(value)
    return out


def _refused(plan: TablePlan, rows: list[Row], refused: set[str]) -> list[Discard]:
    if not refused:
        return []
    return [
        _discard(plan, row, column, "column_limit", None)
        for row in rows
        for column in sorted(refused.intersection(row))
    ]


def _discard(
    plan: TablePlan, row: Row, column: str, reason: str, column_type: ColumnType | None
) -> Discard:
    value = row[column]
    return Discard(
        schema=plan.schema,
        table=plan.table,
        row_id=str(row["id"]),
        column=column,
        value=msgspec.json.encode(value).decode(),
        reason=reason if column_type is None else f"{reason}: column is {column_type}",
        received_at=row.get("received_at"),
    )
