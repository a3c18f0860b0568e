"""The JetStream backend's regulation records (pure): how a new regulation becomes a record, an
attempt's outcome changes it, subjects are chunked, keys are made and partitions are chosen;
and the shared retry arithmetic of a failed attempt."""

from __future__ import annotations

import msgspec

from cdpd.cluster.erase import partition_subjects
from cdpd.cluster.layout import Layout
from cdpd.cluster.regulation_records import (
    RegulationRecord,
    apply,
    chunks,
    record_of,
    suppression_key,
)
from cdpd.destinations.settings import RetryConfig
from cdpd.model.timestamps import format_ms
from cdpd.privacy.regulation_attempts import TargetFailed, failed_update, permanent
from cdpd.privacy.regulations import Target
from cdpd.privacy.regulations_store import DueTarget, NewRegulation, TargetUpdate

AT = "2026-12-07T05:00:00.000Z"


def new(kind: str, targets: list[Target], subject_type: str = "USER_ID") -> NewRegulation:
    return NewRegulation("r1", kind, subject_type, ["u1", "u2"], None, AT, targets)


def test_a_regulation_with_work_starts_running_and_one_without_is_finished() -> None:
    targets = [
        Target("outbox", "outbox"),
        Target("destination:slack", "destination", "NOT_SUPPORTED", "no deletion API"),
    ]
    working = record_of(new("DELETE_ONLY", targets), subject_chunks=1)
    assert (working.status, working.finished_at, working.subject_count) == ("RUNNING", None, 2)
    outbox, slack = working.targets
    assert (outbox.status, outbox.next_attempt_at, outbox.finished_at) == ("INITIALIZED", AT, None)
    assert (slack.status, slack.last_error, slack.finished_at) == (
        "NOT_SUPPORTED",
        "no deletion API",
        AT,
    )
    suppress = record_of(new("SUPPRESS_ONLY", []), subject_chunks=1)
    assert (suppress.status, suppress.finished_at) == ("FINISHED", AT)
    objects = record_of(new("DELETE_ONLY", targets, subject_type="OBJECT_ID"), subject_chunks=1)
    assert (objects.status, objects.targets) == ("NOT_SUPPORTED", [])


def test_an_outcome_changes_its_target_and_the_overall_status() -> None:
    record = record_of(new("DELETE_ONLY", [Target("outbox", "outbox")]), subject_chunks=1)
    later = "2026-12-07T05:00:01.000Z"
    apply(record, TargetUpdate("r1", "outbox", "RUNNING", 1, AT, later, last_error="down"))
    assert (record.status, record.targets[0].attempts, record.finished_at) == ("RUNNING", 1, None)
    apply(record, TargetUpdate("r1", "outbox", "FINISHED", 2, AT, later, 3, finished_at=later))
    target = record.targets[0]
    assert (target.status, target.rows_removed, target.last_error) == ("FINISHED", 3, None)
    assert (record.status, record.finished_at) == ("FINISHED", later)
    decoded = msgspec.json.decode(msgspec.json.encode(record), type=RegulationRecord)
    assert decoded == record
    assert decoded.view(with_targets=True).targets[0].nextAttemptAt is None


def test_subjects_are_chunked_under_the_size_in_order() -> None:
    ids = [f"user-{n:04d}-" + "é" * 40 for n in range(500)]
    parts = chunks(ids, max_bytes=4096)
    assert [i for part in parts for i in part] == ids
    assert all(len(msgspec.json.encode(part)) <= 4096 for part in parts)
    assert len(parts) > 1
    assert chunks([]) == [[]]


def test_suppression_keys_hold_any_user_id_and_name_the_scope() -> None:
    odd = "a.b c/*>%\u0000é"
    workspace, source = suppression_key(odd, "*"), suppression_key(odd, "shop.eu")
    assert workspace.startswith("suppression.")
    assert workspace.endswith(".workspace")
    assert source.endswith(".source.shop.eu")
    assert workspace.split(".")[1] == source.split(".")[1]
    assert suppression_key("other", "*") != workspace


def test_only_the_partitions_of_the_users_are_read() -> None:
    layout = Layout(partitions=16)
    one = partition_subjects(layout, ["u7"])
    assert one == [layout.message_subject(layout.partition_of("u7"))]
    many = partition_subjects(layout, [f"u{n}" for n in range(200)])
    assert many == [layout.messages_subjects]


def test_a_failed_attempt_is_retried_by_the_policy_until_it_gives_up() -> None:
    due = DueTarget("r1", "DELETE_ONLY", None, "destination:amp", "destination", 0, None)
    policy = RetryConfig(backoff_min_s=1.0, backoff_max_s=1.0, retry_window_s=10.0, min_attempts=1)
    start_ms = 1_000_000
    update = failed_update(due, TargetFailed("down", 503), policy, start_ms, start_ms)
    assert (update.status, update.attempts, update.last_status) == ("RUNNING", 1, 503)
    assert update.next_attempt_at > format_ms(start_ms)
    late = failed_update(due, TargetFailed("down", 503), policy, start_ms, start_ms + 60_000)
    assert (late.status, late.finished_at) == ("FAILED", format_ms(start_ms + 60_000))
    refused = failed_update(due, permanent("no secret key"), policy, start_ms, start_ms)
    assert (refused.status, refused.last_error) == ("FAILED", "no secret key")
