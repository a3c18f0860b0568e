"""Messages to rows (mapping), values to columns (values) and the plan that joins them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cdpd.warehouse.mapping import MappedBatch, Mapper
from cdpd.warehouse.plan import catalog_after, plan_load
from cdpd.warehouse.sinks.postgres import encode_timestamp as postgres_timestamp
from cdpd.warehouse.values import (
    UNLOADABLE,
    ColumnType,
    infer_type,
    parse_timestamp,
    parse_timestamps,
    to_boolean,
    to_float,
    to_integer,
    to_string,
    utc_text,
)

LOADED_AT = "2026-01-02T00:00:00.000000Z"


def mapped(*messages: dict[str, Any], source: str = "website") -> MappedBatch:
    mapper = Mapper(loaded_at=LOADED_AT)
    for message in messages:
        mapper.add(source, {"receivedAt": "2026-01-01T00:00:00.000Z", **message})
    return mapper.batch()


def track(message_id: str, event: str = "Order Completed", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "userId": "u1", "event": event, **extra}


def test_a_track_lands_in_tracks_and_its_event_table() -> None:
    batch = mapped(track("m1", properties={"total": 5}, context={"library": {"name": "py"}}))
    tracks = batch.rows[("website", "tracks")]["m1"]
    event = batch.rows[("website", "order_completed")]["m1"]
    assert tracks == {
        "id": "m1",
        "user_id": "u1",
        "received_at": "2026-01-01T00:00:00.000Z",
        "uuid_ts": LOADED_AT,
        "loaded_at": LOADED_AT,
        "context_library_name": "py",
        "event": "order_completed",
        "event_text": "Order Completed",
    }
    assert event == {**tracks, "total": 5}


def test_three_spellings_share_one_table_and_keep_their_text() -> None:
    batch = mapped(track("m1"), track("m2", "order_completed"), track("m3", "orderCompleted"))
    rows = batch.rows[("website", "order_completed")]
    assert [r["event_text"] for r in rows.values()] == [
        "Order Completed",
        "order_completed",
        "orderCompleted",
    ]


def test_flattening_arrays_and_nulls() -> None:
    properties = {
        "product": {"sku": "a1", "price": {"amountUSD": 3}},
        "tags": ["x", "y"],
        "empty": None,
        "items": [{"id": 1}],
    }
    row = mapped(track("m1", properties=properties)).rows[("website", "order_completed")]["m1"]
    assert row["product_sku"] == "a1"
    assert row["product_price_amount_usd"] == 3
    assert row["tags"] == '["x","y"]'
    assert row["items"] == '[{"id":1}]'
    assert "empty" not in row


def test_reserved_names_are_dropped_and_counted() -> None:
    properties = {"user_id": "other", "event": "x", "timestamp": "y", "fine": 1}
    batch = mapped(track("m1", properties=properties))
    row = batch.rows[("website", "order_completed")]["m1"]
    assert row["user_id"] == "u1"
    assert row["event"] == "order_completed"
    assert "timestamp" not in row
    assert row["fine"] == 1
    assert batch.dropped[("website", "order_completed", "user_id")] == 1


def test_identify_fills_identifies_and_merges_users() -> None:
    batch = mapped(
        {"type": "identify", "messageId": "m1", "userId": "u1", "traits": {"plan": "pro", "a": 1}},
        {"type": "identify", "messageId": "m2", "userId": "u1", "traits": {"plan": "team"}},
        {"type": "identify", "messageId": "m3", "anonymousId": "a1", "traits": {"plan": "free"}},
    )
    assert set(batch.rows[("website", "identifies")]) == {"m1", "m2", "m3"}
    users = batch.rows[("website", "users")]
    assert list(users) == ["u1"]  # an anonymous identify makes no users row
    assert users["u1"]["plan"] == "team"
    assert users["u1"]["a"] == 1
    assert "anonymous_id" not in users["u1"]


def test_group_page_screen_alias() -> None:
    batch = mapped(
        {"type": "group", "messageId": "g", "userId": "u", "groupId": "g1", "traits": {"n": 2}},
        {"type": "page", "messageId": "p", "userId": "u", "name": "Home", "properties": {"a": 1}},
        {"type": "screen", "messageId": "s", "userId": "u", "name": "Settings"},
        {"type": "alias", "messageId": "a", "userId": "u", "previousId": "anon"},
    )
    assert batch.rows[("website", "groups")]["g"]["group_id"] == "g1"
    assert batch.rows[("website", "accounts")]["g1"]["n"] == 2
    assert batch.rows[("website", "pages")]["p"]["name"] == "Home"
    assert batch.rows[("website", "screens")]["s"]["name"] == "Settings"
    assert batch.rows[("website", "aliases")]["a"]["previous_id"] == "anon"


def test_a_duplicate_message_id_keeps_the_first_copy() -> None:
    batch = mapped(track("m1", properties={"v": 1}), track("m1", properties={"v": 2}))
    assert batch.rows[("website", "order_completed")]["m1"]["v"] == 1


def test_unnamed_events_and_columns_go_to_discards() -> None:
    batch = mapped(track("m1", "!!!", properties={"a": 1}), track("m2", properties={"$$": 1}))
    assert ("website", "") not in batch.rows
    assert [(d.table, d.column, d.reason) for d in batch.discards] == [
        ("tracks", "properties", "no_table_name"),
        ("order_completed", "$$", "no_column_name"),
    ]


@pytest.mark.parametrize(
    "properties",
    [
        {"Order Id": "a", "orderId": "b", "ORDER_ID": "c"},
        {"orderId": "b", "ORDER_ID": "c", "Order Id": "a"},
        {"ORDER_ID": "c", "Order Id": "a", "orderId": "b"},
    ],
)
def test_colliding_names_keep_one_winner_whatever_the_key_order(properties: Any) -> None:
    batch = mapped(track("m1", properties=properties))
    assert batch.rows[("website", "order_completed")]["m1"]["order_id"] == "c"
    assert sorted((d.column, d.value, d.reason) for d in batch.discards) == [
        ("Order Id", '"a"', "name_collision: order_id holds ORDER_ID"),
        ("orderId", '"b"', "name_collision: order_id holds ORDER_ID"),
    ]
    assert not batch.dropped


def test_the_key_written_as_its_column_wins_then_the_least_nested() -> None:
    properties = {
        "addressCity": "b",
        "address": {"city": "c", "zip": [1, 2]},
        "address_city": "a",
        "Address Zip": "z",
    }
    batch = mapped(track("m1", properties=properties))
    row = batch.rows[("website", "order_completed")]["m1"]
    assert (row["address_city"], row["address_zip"]) == ("a", "[1,2]")
    assert sorted((d.column, d.value, d.reason) for d in batch.discards) == [
        ("Address Zip", '"z"', "name_collision: address_zip holds address.zip"),
        ("address.city", '"c"', "name_collision: address_city holds address_city"),
        ("addressCity", '"b"', "name_collision: address_city holds address_city"),
    ]


def test_a_property_named_like_a_context_column_leaves_the_context_value() -> None:
    message = track("m1", context={"ip": "1.2.3.4"}, properties={"contextIp": "5.6.7.8"})
    batch = mapped(message)
    assert batch.rows[("website", "order_completed")]["m1"]["context_ip"] == "1.2.3.4"
    assert [(d.column, d.value, d.reason) for d in batch.discards] == [
        ("contextIp", '"5.6.7.8"', "name_collision: context_ip holds the context's value")
    ]


@pytest.mark.parametrize(
    ("value", "column_type"),
    [
        (True, ColumnType.BOOLEAN),
        (3, ColumnType.INTEGER),
        (2**70, ColumnType.STRING),
        (3.0, ColumnType.FLOAT),
        ("2026-01-01T00:00:00Z", ColumnType.TIMESTAMP),
        ("2026-01-01T10:00:00.5+05:30", ColumnType.TIMESTAMP),
        ("2026-13-01T00:00:00Z", ColumnType.STRING),
        ("2026-01-01", ColumnType.STRING),
        ("hello", ColumnType.STRING),
    ],
)
def test_infer_type(value: Any, column_type: ColumnType) -> None:
    assert infer_type(value) == column_type


def test_lossless_widening_only() -> None:
    assert to_string(True) == "true"
    assert to_string(42) == "42"
    assert to_string(1.5) == "1.5"
    assert to_float(3) == 3.0
    assert to_float(2**60 + 1) is UNLOADABLE  # a double cannot hold it exactly
    assert to_integer(4.0) == 4
    assert to_integer(4.5) is UNLOADABLE
    assert to_integer(True) is UNLOADABLE
    assert to_boolean(1) is UNLOADABLE


def test_timestamps_as_utc_text() -> None:
    moment = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert utc_text(moment) == "2026-01-01T10:00:00.000000Z"


def test_timestamps_as_postgres_microseconds() -> None:
    assert postgres_timestamp(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert postgres_timestamp(datetime(2000, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 0
    assert postgres_timestamp(datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1
    # PostgreSQL: extract(epoch from 2026-01-01 - 2000-01-01) = 820540800
    assert postgres_timestamp(datetime(2026, 1, 1, tzinfo=UTC)) == 820_540_800_000_000


TIMES = [
    "2026-01-01T00:00:00Z",
    "2026-01-01t10:00:00.5+05:30",
    "2026-01-01 10:00:00.123456789-0800",
    "2026-01-01T10:00:00",  # no offset: UTC
    "9999-12-31T23:00:00Z",
    "9999-12-31T23:30:00-01:00",  # in UTC, the year 10000
    "0001-01-01T00:30:00+01:00",  # in UTC, the year 0
    "2026-02-30T00:00:00Z",  # the right shape, not a date
    "2026-01-01T24:00:00Z",
    "2026-01-01",
    "later",
    "",
]


def test_times_outside_the_utc_years_1_to_9999_are_not_timestamps() -> None:
    assert parse_timestamp("9999-12-31T23:00:00Z") is not None
    assert parse_timestamp("9999-12-31T23:30:00-01:00") is None
    assert parse_timestamp("0001-01-01T00:30:00+01:00") is None
    assert infer_type("0001-01-01T00:30:00+01:00") == ColumnType.STRING


@pytest.mark.parametrize("values", [TIMES, TIMES[:5], TIMES[5:7], [TIMES[0], 7, None, ["x"]], []])
def test_many_timestamps_parse_as_each_would(values: list[Any]) -> None:
    expected = [parse_timestamp(v) if type(v) is str else None for v in values]
    assert parse_timestamps(values) == expected
    assert all(m is None or m.tzinfo is not None for m in parse_timestamps(values))


def test_plan_new_columns_conflicts_and_the_column_limit() -> None:
    batch = mapped(
        track("m1", properties={"total": 1, "flag": True}),
        track("m2", properties={"total": 2.5, "flag": "yes"}),
        track("m3", properties={f"p{n}": n for n in range(30)}),
    )
    catalog = {
        ("website", "order_completed"): {"id": ColumnType.STRING, "flag": ColumnType.BOOLEAN}
    }
    plan = plan_load(batch, catalog, max_columns=20, encode_timestamp=utc_text)
    table = next(t for t in plan.tables if t.table == "order_completed")
    new = dict(table.new_columns)
    assert new["total"] == ColumnType.FLOAT  # the last value in the batch decides
    assert new["received_at"] == ColumnType.TIMESTAMP
    assert len(new) + 2 == 20
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows()}
    assert rows["m1"]["total"] == 1.0
    assert rows["m2"]["flag"] is None
    reasons = {(d.row_id, d.column): d.reason for d in plan.discards}
    assert reasons[("m2", "flag")] == "type_conflict: column is boolean"
    assert sum(r == "column_limit" for r in reasons.values()) > 0
    assert plan.refused_columns[("website", "order_completed")]


def test_plan_converts_a_column_only_where_its_values_need_it() -> None:
    batch = mapped(
        track("m1", properties={"count": 1, "label": "a", "at": "2026-01-01T10:00:00Z"}),
        track("m2", properties={"count": 2**70, "label": 7, "at": "later"}),
        track("m3", receivedAt={"not": "a time"}, properties={"count": 3.0, "label": None}),
    )
    catalog = {
        ("website", "order_completed"): {
            "id": ColumnType.STRING,
            "count": ColumnType.INTEGER,
            "label": ColumnType.STRING,
            "at": ColumnType.TIMESTAMP,
            "received_at": ColumnType.TIMESTAMP,
        }
    }
    plan = plan_load(batch, catalog, max_columns=100, encode_timestamp=utc_text)
    table = next(t for t in plan.tables if t.table == "order_completed")
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows()}
    assert [rows[m]["count"] for m in ("m1", "m2", "m3")] == [1, None, 3]
    assert [rows[m]["label"] for m in ("m1", "m2", "m3")] == ["a", "7", None]
    assert rows["m1"]["at"] == "2026-01-01T10:00:00.000000Z"
    assert rows["m2"]["at"] is None
    assert rows["m1"]["received_at"] == "2026-01-01T00:00:00.000000Z"
    assert rows["m3"]["received_at"] is None
    discarded = {(d.table, d.row_id, d.column) for d in plan.discards}
    assert discarded >= {
        ("order_completed", "m2", "count"),
        ("order_completed", "m2", "at"),
        ("order_completed", "m3", "received_at"),
    }


def test_the_catalog_after_a_plan_has_its_new_tables_and_columns() -> None:
    batch = mapped(track("m1", properties={"total": 1}), track("m2", "Refunded"))
    catalog = {
        ("website", "order_completed"): {"id": ColumnType.STRING},
        ("website", "untouched"): {"id": ColumnType.STRING},
    }
    plan = plan_load(batch, catalog, max_columns=100, encode_timestamp=utc_text)
    after = catalog_after(catalog, plan)
    assert after[("website", "order_completed")]["total"] == ColumnType.INTEGER
    assert after[("website", "refunded")]["id"] == ColumnType.STRING
    assert after[("website", "untouched")] == {"id": ColumnType.STRING}
    assert catalog[("website", "order_completed")] == {"id": ColumnType.STRING}  # not changed
    again = plan_load(batch, after, max_columns=100, encode_timestamp=utc_text)
    assert all(not table.new_columns for table in again.tables)


def test_text_with_nul_becomes_a_discard_with_escaped_names() -> None:
    batch = mapped(
        track("m1", properties={"\x00": "x", "note": "a\x00b", "ok": "fine"}, event="E\x00"),
        {"type": "identify", "messageId": "i1", "userId": "u\x00", "traits": {"plan": "pro"}},
    )
    batch.nul_text = True  # what `batches.prepare` finds in the stored JSON
    plan = plan_load(batch, {}, max_columns=100, encode_timestamp=utc_text)
    tables = {t.table: dict(zip(t.columns, t.values, strict=True)) for t in plan.tables}
    assert "users" not in tables
    assert tables["e"]["ok"] == ["fine"]
    assert "note" not in tables["e"]
    assert "event_text" not in tables["tracks"]
    assert sorted((d.table, d.row_id, d.column, d.reason) for d in plan.discards) == [
        ("e", "m1", "\\u0000", "no_column_name"),
        ("e", "m1", "event_text", "unstorable_text: U+0000"),
        ("e", "m1", "note", "unstorable_text: U+0000"),
        ("identifies", "i1", "user_id", "unstorable_text: U+0000"),
        ("tracks", "m1", "event_text", "unstorable_text: U+0000"),
        ("users", '"u\\u0000"', "id", "unstorable_text: U+0000 in the id; the row is not loaded"),
    ]
    assert all("\x00" not in d.value for d in plan.discards)


def test_context_keys_that_share_a_column_are_discarded_in_the_message_table() -> None:
    context = {"userAgent": "b", "user_agent": "a"}
    batch = mapped({"type": "identify", "messageId": "i1", "userId": "u1", "context": context})
    assert batch.rows[("website", "identifies")]["i1"]["context_user_agent"] == "a"
    assert [(d.table, d.column, d.reason) for d in batch.discards] == [
        (
            "identifies",
            "context.userAgent",
            "name_collision: context_user_agent holds context.user_agent",
        )
    ]
