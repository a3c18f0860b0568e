"""A node's id for the files it writes: made once, kept in its data folder."""

from __future__ import annotations

from pathlib import Path

from cdpd.cluster.file_writers import FileWriter, erased_key, node_id, writer_key
from cdpd.cluster.regulations_worker import gone_note


def test_a_node_keeps_its_id_across_restarts_and_another_folder_has_its_own(
    tmp_path: Path,
) -> None:
    first = node_id(tmp_path / "a" / "var")
    assert first == node_id(tmp_path / "a" / "var")
    assert len(first) == 16
    assert first.isalnum()
    assert node_id(tmp_path / "b") != first


def test_an_unreadable_id_is_made_again(tmp_path: Path) -> None:
    (tmp_path / "node_id").write_text("not an id\n")
    made = node_id(tmp_path)
    assert made.isalnum()
    assert (tmp_path / "node_id").read_text().strip() == made


def test_keys_and_the_note_for_nodes_not_waited_for() -> None:
    assert writer_key("ab12") == "files.ab12"
    assert erased_key("0193", "my.archive", "ab12") == "file.0193.my~archive.ab12"
    assert gone_note([], 60.0) is None
    gone = FileWriter(node_id="ab12", node="old:1", destinations=["a"], seen_at_ms=0)
    note = gone_note([gone], 604800.0)
    assert note is not None
    assert note.startswith("not erased by 1 node(s) unseen for more than node_gone_s = 604800 s")
    assert "ab12 (last seen 1970-01-01T00:00:00.000Z)" in note
