"""The pure parts of ingest on the JetStream backend."""

from __future__ import annotations

import pytest

from cdpd.cluster.ingest import first_of_each_id, table_and_columns
from cdpd.cluster.layout import Layout
from cdpd.cluster.publish import header_block
from cdpd.governance.store import INSERT_BLOCKED, INSERT_VIOLATION
from cdpd.model.rows import OutboxRow


def _row(message_id: str, source: str = "web") -> OutboxRow:
    return OutboxRow(message_id, source, "track", "E", "u", None, "2026-01-01", "{}")


def test_a_request_keeps_the_first_row_of_each_message_id() -> None:
    rows = [_row("a"), _row("a"), _row("a", "app"), _row("b")]
    kept = first_of_each_id(rows, by_source=True)
    assert [(r.message_id, r.source) for r in kept] == [("a", "web"), ("a", "app"), ("b", "web")]
    assert len(first_of_each_id(rows, by_source=False)) == 2


@pytest.mark.parametrize("statement", [INSERT_VIOLATION, INSERT_BLOCKED])
def test_governance_rows_are_named_after_their_table_and_columns(statement: str) -> None:
    table, columns = table_and_columns(statement)
    assert table in statement
    assert columns
    assert all(column.isidentifier() for column in columns)


def test_a_statement_without_named_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="not an INSERT"):
        table_and_columns("DELETE FROM messages")


def test_theheader_block_is_the_nats_wire_form() -> None:
    block = header_block({"Nats-Msg-Id": "web:m1", "Cdpd-Type": "track"})
    assert block == b"NATS/1.0\r\nNats-Msg-Id: web:m1\r\nCdpd-Type: track\r\n\r\n"


def test_a_message_id_hashes_to_one_subject_token() -> None:
    subject = Layout().dedup_subject("web:a.b c*>")
    prefix, token = subject.rsplit(".", 1)
    assert prefix == "cdpd.dedup"
    assert token.isalnum()
    assert subject == Layout().dedup_subject("web:a.b c*>")
