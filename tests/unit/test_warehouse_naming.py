"""Warehouse names: go-snakecase's own vectors, Segment's documented examples, safe names."""

from __future__ import annotations

import pytest

from cdpd.warehouse import naming

# segmentio/go-snakecase snake_test.go, every vector.
UPSTREAM = [
    ("sample text", "sample_text"),
    ("sample-text", "sample_text"),
    ("sample_text", "sample_text"),
    ("sample___text", "sample_text"),
    ("sampleText", "sample_text"),
    ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
    ("sample 2 Text", "sample_2_text"),
    ("   sample   2    Text   ", "sample_2_text"),
    ("   $#$sample   2    Text   ", "sample_2_text"),
    ("SAMPLE 2 TEXT", "sample_2_text"),
    ("___$$Base64Encode", "base64_encode"),
    ("FOO:BAR$BAZ", "foo_bar_baz"),
    ("FOO#BAR#BAZ", "foo_bar_baz"),
    ("something.com", "something_com"),
    ("$something%", "something"),
    ("•¶§ƒ˚foo˙∆˚¬", "foo"),
    ("CStringRef", "cstring_ref"),
    ("5test", "5test"),
    ("test5", "test5"),
    ("THE5r", "the5r"),
    ("5TEst", "5test"),
    ("_5TEst", "5test"),
    ("@%#&5TEst", "5test"),
    ("edf_6N", "edf_6n"),
    ("f_pX9", "f_p_x9"),
    ("p_z9Rg", "p_z9_rg"),
    ("2FA Enabled", "2fa_enabled"),
    ("Enabled 2FA", "enabled_2fa"),
]
# Names from Segment's docs and the research notes (warehouse-governance.md 1.3).
SEGMENT_EXAMPLES = [
    ("Order Completed", "order_completed"),
    ("order_completed", "order_completed"),
    ("orderCompleted", "order_completed"),
    ("Order-Completed", "order_completed"),
    ("accountType", "account_type"),
    ("userId", "user_id"),
    ("userID", "user_id"),
    ("iOS App Opened", "i_os_app_opened"),
    ("XMLHttp", "xmlhttp"),
    ("HTMLParser", "htmlparser"),
    ("isISO8601", "is_iso8601"),
    ("Signed Up!", "signed_up"),
    ("$revenue", "revenue"),
    ("Café Visited", "caf_visited"),
    ("ID", "id"),
    ("context_app_version", "context_app_version"),
]


@pytest.mark.parametrize(("raw", "snake"), UPSTREAM + SEGMENT_EXAMPLES)
def test_snakecase(raw: str, snake: str) -> None:
    assert naming.snakecase(raw) == snake


@pytest.mark.parametrize(
    ("event", "table"),
    [
        ("Order Completed", "order_completed"),
        ("3doctors", "_3doctors"),  # a leading digit gets `_`, as on Redshift
        ("Select", "_select"),  # a reserved word gets `_`
        ("tracks", "_tracks"),  # built-in table names are taken
        ("Users", "_users"),
        ("cdpd_discards", "_cdpd_discards"),
        ('x"; DROP TABLE users; --', "x_drop_table_users"),
        ("!!!", ""),  # nothing left: the caller drops it
    ],
)
def test_event_table_names(event: str, table: str) -> None:
    assert naming.event_table_name(event) == table


def test_column_names_get_prefixes_but_not_the_built_in_table_rule() -> None:
    assert naming.column_name("order") == "_order"
    assert naming.column_name("2fa") == "_2fa"
    assert naming.column_name("tracks") == "tracks"


def test_schema_names() -> None:
    assert naming.schema_name("Web Site") == "web_site"
    assert naming.schema_name("pg_stats") == "_pg_stats"
    assert naming.schema_name("1st-party") == "_1st_party"


def test_long_names_are_cut_to_63_bytes_and_stay_distinct() -> None:
    first = naming.column_name("a" * 70 + "_one")
    second = naming.column_name("a" * 70 + "_two")
    assert len(first) == len(second) == naming.MAX_NAME_BYTES
    assert first != second
    assert first.startswith("a" * 50)
    assert naming.column_name("short") == "short"


def test_quote_doubles_quotes() -> None:
    assert naming.quote('a"b') == '"a""b"'
