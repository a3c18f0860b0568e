"""Snapshots of the profiles state: names order by term, position then revision, a copy is a
committed state of each file, restoring replaces what was there, and the config keeps the
snapshot interval inside the dedup window."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import msgspec
import pytest

from cdpd import config as cdpd_config
from cdpd.cluster import snapshots
from cdpd.cluster.snapshots import SnapshotName


def test_names_order_by_term_then_position_and_parse_back() -> None:
    older_term = SnapshotName(3, 9_000)
    newer = [SnapshotName(4, 10), SnapshotName(4, 11)]
    assert max([older_term, *newer]) == SnapshotName(4, 11)
    assert SnapshotName.parse(newer[0].object) == newer[0]
    assert newer[0].object == "profiles.00000000000000000004.00000000000000000010"
    assert SnapshotName.parse("profiles.4") is None
    assert SnapshotName.parse("other.1.2") is None
    again = newer[1].after(newer[1])  # stored again at the same position: a newer revision
    assert again > newer[1]
    assert again.after(again) > again
    assert SnapshotName.parse(again.object) == again
    assert newer[1].after(newer[0]) == newer[1]


def _store(path: Path, seq: int) -> sqlite3.Connection:
    """A store in WAL mode, left open (its WAL file stays)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS position (name TEXT PRIMARY KEY, seq INTEGER)")
    conn.execute("INSERT OR REPLACE INTO position VALUES ('outbox', ?)", (seq,))
    return conn


def test_a_copy_restores_in_place_of_what_was_there(tmp_path: Path) -> None:
    live = {"engage.sqlite3": tmp_path / "engage.sqlite3"}
    live["identity.sqlite3"] = tmp_path / "identity.sqlite3"
    writers = [_store(live["identity.sqlite3"], 42), _store(live["engage.sqlite3"], 40)]
    tar_path = tmp_path / "snapshot.tar"
    assert snapshots.copy_files(live, tar_path) == 42
    elsewhere = tmp_path / "node-b"
    elsewhere.mkdir()
    restored = {name: elsewhere / name for name in live}
    _store(restored["identity.sqlite3"], 7).close()  # stale state of an earlier term
    (elsewhere / "identity.sqlite3-wal").write_bytes(b"")  # as a killed process leaves it
    snapshots.unpack(tar_path, restored)
    assert not (elsewhere / "identity.sqlite3-wal").exists()  # the stale WAL went too
    with contextlib.closing(sqlite3.connect(restored["identity.sqlite3"])) as conn:
        assert conn.execute("SELECT seq FROM position").fetchone() == (42,)
    snapshots.unpack(None, restored)  # no snapshot in the cluster: start empty
    assert not any(path.exists() for path in restored.values())
    for writer in writers:
        writer.close()


def _config(storage: dict[str, object]) -> cdpd_config.Config:
    return msgspec.convert(
        {
            "storage": {"backend": "jetstream", **storage},
            "identity": {"space": "main", "access_tokens": ["tok"]},
        },
        cdpd_config.Config,
    )


@pytest.mark.parametrize(
    ("storage", "refused"),
    [
        ({}, False),
        ({"jetstream": {"snapshot_interval_s": 150.0}, "dedup_window_s": 60}, True),
        ({"jetstream": {"snapshot_interval_s": 150.0}}, False),  # the 24 h markers cover it
        ({"dedup_window_s": 0}, True),
    ],
)
def test_the_snapshot_interval_stays_inside_the_dedup_window(
    storage: dict[str, object], refused: bool
) -> None:
    problems = cdpd_config._cross_check(_config(storage))
    assert any("snapshot_interval_s" in p for p in problems) == refused
