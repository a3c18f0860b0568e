"""Snapshots of the profiles state: names order by term, position then revision, a copy is a
committed state of each file packed compressed, restoring replaces what was there (from a
compressed snapshot or one stored before compression, a plain tar), and the config keeps the
snapshot interval inside the dedup window."""

from __future__ import annotations

import contextlib
import sqlite3
import tarfile
from pathlib import Path

import msgspec
import pytest

from cdpd import config as cdpd_config
from cdpd.cluster import snapshot_archive, snapshots
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
    archive_path = tmp_path / "snapshot.tar.zst"
    assert snapshots.copy_files(live, archive_path) == 42
    assert snapshot_archive.is_compressed(archive_path)
    elsewhere = tmp_path / "node-b"
    elsewhere.mkdir()
    restored = {name: elsewhere / name for name in live}
    _store(restored["identity.sqlite3"], 7).close()  # stale state of an earlier term
    (elsewhere / "identity.sqlite3-wal").write_bytes(b"")  # as a killed process leaves it
    snapshots.unpack(archive_path, restored)
    assert not (elsewhere / "identity.sqlite3-wal").exists()  # the stale WAL went too
    with contextlib.closing(sqlite3.connect(restored["identity.sqlite3"])) as conn:
        assert conn.execute("SELECT seq FROM position").fetchone() == (42,)
    snapshots.unpack(None, restored)  # no snapshot in the cluster: start empty
    assert not any(path.exists() for path in restored.values())
    for writer in writers:
        writer.close()


def _filled_store(path: Path, rows: int) -> None:
    """A store of `rows` rows of repetitive text, as profiles' traits are."""
    _store(path, rows).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE traits (id INTEGER PRIMARY KEY, value TEXT)")
        conn.executemany(
            "INSERT INTO traits (value) VALUES (?)",
            ((f'{{"email": "user{n}@example.com", "plan": "pro"}}',) for n in range(rows)),
        )


def _rows(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT id, value FROM traits ORDER BY id").fetchall()


def test_the_archive_is_compressed_and_restores_every_row(tmp_path: Path) -> None:
    live = {"engage.sqlite3": tmp_path / "engage.sqlite3"}
    live["identity.sqlite3"] = tmp_path / "identity.sqlite3"
    for path in live.values():
        _filled_store(path, 20_000)
    archive_path = tmp_path / "snapshot.tar.zst"
    assert snapshots.copy_files(live, archive_path) == 20_000
    files_bytes = sum(path.stat().st_size for path in live.values())
    assert archive_path.stat().st_size * 3 < files_bytes
    restored_dir = tmp_path / "restored"
    snapshot_archive.extract(archive_path, restored_dir)
    for name, path in live.items():
        assert _rows(restored_dir / name) == _rows(path)


def test_a_snapshot_stored_before_compression_still_restores(tmp_path: Path) -> None:
    files = {"identity.sqlite3": tmp_path / "identity.sqlite3"}
    _filled_store(files["identity.sqlite3"], 500)
    old_archive = tmp_path / "snapshot.tar"
    with tarfile.open(old_archive, "w") as tar:  # as the holder stored it before
        tar.add(files["identity.sqlite3"], arcname="identity.sqlite3")
    assert not snapshot_archive.is_compressed(old_archive)
    elsewhere = tmp_path / "node-b"
    elsewhere.mkdir()
    restored = {"identity.sqlite3": elsewhere / "identity.sqlite3"}
    snapshots.unpack(old_archive, restored)
    assert _rows(restored["identity.sqlite3"]) == _rows(files["identity.sqlite3"])


def test_a_damaged_archive_is_refused_not_half_restored(tmp_path: Path) -> None:
    live = {"identity.sqlite3": tmp_path / "identity.sqlite3"}
    _filled_store(live["identity.sqlite3"], 5_000)
    archive_path = tmp_path / "snapshot.tar.zst"
    snapshots.copy_files(live, archive_path)
    whole = archive_path.read_bytes()
    archive_path.write_bytes(whole[: len(whole) // 2])
    elsewhere = tmp_path / "node-b"
    elsewhere.mkdir()
    restored = {"identity.sqlite3": elsewhere / "identity.sqlite3"}
    _store(restored["identity.sqlite3"], 7).close()
    with pytest.raises((tarfile.TarError, OSError)):
        snapshots.unpack(archive_path, restored)
    with contextlib.closing(sqlite3.connect(restored["identity.sqlite3"])) as conn:
        assert conn.execute("SELECT seq FROM position").fetchone() == (7,)


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
