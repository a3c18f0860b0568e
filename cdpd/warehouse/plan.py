"""What a batch does to a warehouse: new tables and columns, the values to write, the discards.
Pure: it takes the mapped rows and the columns the warehouse already has.

New columns are typed by `values.infer_type` (the last value in the batch decides), except the
standard id and timestamp columns, whose types are fixed. A table never grows past
`max_columns`: values of the columns that did not fit go to the discards table, as do values
that do not fit their column's type (see `values`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import msgspec

from cdpd.warehouse.mapping import UPSERT_TABLES, Discard, MappedBatch, Row, TableKey
from cdpd.warehouse.values import UNLOADABLE, ColumnType, Converter, converters, infer_type

Catalog = dict[TableKey, dict[str, ColumnType]]

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
    columns: list[str]  # the columns `rows` fill, in order; "id" first
    types: list[ColumnType]  # the type of each of `columns`
    rows: list[tuple[Any, ...]]
    upsert: bool  # merge into the row with the same id, rather than skip it


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
    plan = LoadPlan(tables=[], discards=list(batch.discards), refused_columns={})
    for key, rows in batch.rows.items():
        existing = catalog.get(key, {})
        table_plan, refused = _plan_table(key, list(rows.values()), existing, max_columns)
        table_plan.rows = _values(table_plan, rows.values(), refused, convert, plan.discards)
        plan.tables.append(table_plan)
        if refused:
            plan.refused_columns[key] = sorted(refused)
    return plan


def _plan_table(
    key: TableKey, rows: list[Row], existing: dict[str, ColumnType], max_columns: int
) -> tuple[TablePlan, set[str]]:
    new_types: dict[str, ColumnType] = {}
    seen: dict[str, None] = {}  # every column of the batch, in first-seen order
    for row in rows:
        if seen.keys() >= row.keys():
            continue
        for column, value in row.items():
            seen.setdefault(column)
            if column not in existing:
                new_types[column] = FIXED_TYPES.get(column) or infer_type(value)
    for row in rows:  # the last occurrence in the batch decides a new column's type
        for column in new_types.keys() & row.keys():
            new_types[column] = FIXED_TYPES.get(column) or infer_type(row[column])
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
        rows=[],
        upsert=key[1] in UPSERT_TABLES,
    )
    return plan, refused


def _values(
    plan: TablePlan,
    rows: Iterable[Row],
    refused: set[str],
    convert: dict[ColumnType, Converter],
    discards: list[Discard],
) -> list[tuple[Any, ...]]:
    steps = list(zip(plan.columns, [convert[t] for t in plan.types], plan.types, strict=True))
    out = []
    for row in rows:
        values = []
        for column, converter, column_type in steps:
            value = row.get(column)
            if value is not None:
                value = converter(value)
                if value is UNLOADABLE:
                    discards.append(_discard(plan, row, column, "type_conflict", column_type))
                    value = None
            values.append(value)
        out.append(tuple(values))
        for column in refused.intersection(row):
            discards.append(_discard(plan, row, column, "column_limit", None))
    return out


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
