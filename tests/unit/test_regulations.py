"""The pure parts of regulations: what each type reaches, how target statuses add up, the
suppression sets, the file line filter and the webhook's delete message."""

from __future__ import annotations

import msgspec
import pytest

from cdpd import config as cdpd_config
from cdpd.model.rows import OutboxRow
from cdpd.privacy.deletion import line_filter
from cdpd.privacy.regulations import (
    EFFECTS,
    REGULATION_TYPES,
    RegulationRequest,
    overall_status,
    plan_targets,
)
from cdpd.privacy.regulations_vendors import delete_message
from cdpd.privacy.suppression import Suppressions

CONFIG = cdpd_config.parse(
    """
[[sources]]
name = "web"
write_key = "k1"
[[sources]]
name = "app"
write_key = "k2"
[[warehouses]]
name = "wh"
type = "sqlite"
[[destinations]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9/"
[[destinations]]
name = "files"
type = "file"
path = "/tmp/never-written.ndjson"
sources = ["app"]
[[destinations]]
name = "amp"
type = "amplitude"
api_key = "k"
[[destinations]]
name = "chat"
type = "slack"
webhook_url = "http://127.0.0.1:9/"
[[destinations]]
name = "off"
type = "webhook"
url = "http://127.0.0.1:9/"
enabled = false
"""
)


def test_every_type_has_an_effect() -> None:
    assert set(EFFECTS) == set(REGULATION_TYPES)


@pytest.mark.parametrize(
    ("kind", "source", "expected"),
    [
        ("SUPPRESS_ONLY", None, {}),
        ("UNSUPPRESS", None, {}),
        ("DELETE_ARCHIVE_ONLY", None, {"outbox": "INITIALIZED"}),
        (
            "DELETE_INTERNAL",
            None,
            {"outbox": "INITIALIZED", "warehouse:wh": "INITIALIZED", "file:files": "INITIALIZED"},
        ),
        (
            "SUPPRESS_WITH_DELETE_INTERNAL",
            "web",
            {"outbox": "INITIALIZED", "warehouse:wh": "INITIALIZED"},
        ),
        (
            "SUPPRESS_WITH_DELETE",
            "app",
            {
                "outbox": "INITIALIZED",
                "warehouse:wh": "INITIALIZED",
                "file:files": "INITIALIZED",
                "destination:hook": "INITIALIZED",
                "destination:amp": "NOT_SUPPORTED",  # no secret_key
                "destination:chat": "NOT_SUPPORTED",
            },
        ),
    ],
)
def test_targets_follow_the_type_the_scope_and_the_config(
    kind: str, source: str | None, expected: dict[str, str]
) -> None:
    targets = plan_targets(CONFIG, kind, source)
    assert {t.name: t.status for t in targets} == expected
    assert targets[:1] == [] or targets[0].name == "outbox"  # the outbox always first
    notes = {t.name: t.note for t in targets if t.note}
    if "destination:amp" in notes:
        assert "secret_key" in notes["destination:amp"]


@pytest.mark.parametrize(
    ("statuses", "overall"),
    [
        ([], "FINISHED"),
        (["FINISHED", "RUNNING"], "RUNNING"),
        (["INITIALIZED"], "RUNNING"),
        (["FINISHED", "FINISHED"], "FINISHED"),
        (["FINISHED", "FAILED"], "FAILED"),
        (["FINISHED", "NOT_SUPPORTED"], "PARTIAL_SUCCESS"),
        (["FAILED", "NOT_SUPPORTED"], "FAILED"),
        (["FAILED", "RUNNING"], "RUNNING"),
    ],
)
def test_the_overall_status(statuses: list[str], overall: str) -> None:
    assert overall_status(statuses) == overall


def test_the_request_is_segments_body() -> None:
    body = b'{"regulationType":"SUPPRESS_ONLY","subjectType":"USER_ID","subjectIds":["u1"]}'
    asked = msgspec.json.decode(body, type=RegulationRequest)
    assert (asked.regulationType, asked.subjectIds) == ("SUPPRESS_ONLY", ["u1"])
    with pytest.raises(msgspec.ValidationError, match="filter"):
        msgspec.json.decode(body[:-1] + b',"filter":1}', type=RegulationRequest)


def _row(user: str | None, anonymous: str | None = "a") -> OutboxRow:
    return OutboxRow("m", "web", "track", "E", user, anonymous, "t", "{}")


def test_suppressions_per_source_and_for_every_source() -> None:
    suppressions = Suppressions()
    suppressions.replace([("u1", "*"), ("u2", "web")])
    rows = [_row("u1"), _row("u2"), _row("u3"), _row(None)]
    assert [r.user_id for r in suppressions.admit("web", rows)] == ["u3", None]
    assert [r.user_id for r in suppressions.admit("app", rows)] == ["u2", "u3", None]
    assert suppressions.suppressed == {"web": 2, "app": 1}
    suppressions.replace([])
    assert suppressions.admit("web", rows) is rows  # nothing suppressed: nothing looked at


def test_the_file_filter_drops_the_users_and_the_deleted_messages() -> None:
    drop = line_filter(["u1", "42"], ["m-7"])
    assert drop(b'{"userId":"u1","messageId":"m-1"}\n')
    assert drop(b'{"userId":42}\n')
    assert drop(b'{"user_id":"u1"}\n')  # a mapped line
    assert drop(b'{"userId":"u2","messageId":"m-7"}\n')
    assert not drop(b'{"userId":"u2","messageId":"m-8"}\n')
    assert not drop(b"[1, 2]\n")
    assert not drop(b"not json\n")


def test_the_webhooks_delete_message_is_segments() -> None:
    first = delete_message("u1", "r1", 0)
    again = delete_message("u1", "r1", 5000)
    assert first["type"] == "delete"
    assert first["userId"] == "u1"
    assert first["messageId"] == again["messageId"]  # a retry is the same message
    assert first["messageId"] != delete_message("u2", "r1", 0)["messageId"]
    assert first["timestamp"] == "1970-01-01T00:00:00.000Z"


def test_with_identity_a_workspace_deletion_forgets_the_profile_second() -> None:
    config = cdpd_config.parse(
        '[[sources]]\nname = "app"\nwrite_key = "k"\n'
        '[[warehouses]]\nname = "wh"\ntype = "sqlite"\n'
        '[identity]\nspace = "s"\naccess_tokens = ["t"]\n'
    )
    names = [t.name for t in plan_targets(config, "SUPPRESS_WITH_DELETE", None)]
    assert names == ["outbox", "identity", "warehouse:wh"]
    assert "identity" not in [t.name for t in plan_targets(config, "DELETE_INTERNAL", "app")]
    assert [t.name for t in plan_targets(config, "DELETE_ARCHIVE_ONLY", None)] == ["outbox"]
    assert plan_targets(config, "SUPPRESS_ONLY", None) == []
