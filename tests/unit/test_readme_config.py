"""Every TOML example in the README passes `cdpd check-config`, and a name's rules are said in
words (a user who writes `name = "big orders"` learns what a name may hold)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cdpd import cli
from tests.helpers import PROJECT_ROOT

BLOCKS = re.findall(r"```toml\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), re.S)
SOURCE = '[[sources]]\nname = "{name}"\nwrite_key = "wk_{name}"\n'


def _complete(block: str) -> str:
    """A README block as a whole config: the sources it refers to, around a source's sub-table."""
    text = block
    if block.startswith("[sources."):  # the settings of one [[sources]] entry
        text = SOURCE.format(name="website") + block
        text += SOURCE.format(name="violations") + SOURCE.format(name="blocked")
    elif "[[sources]]" not in block:
        text = SOURCE.format(name="website") + block
    return text


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{n}" for n in range(len(BLOCKS))])
def test_each_readme_toml_example_passes_check_config(
    block: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVENTS_HOOK_SECRET", "s3cret")
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "web.json").write_text('{"rules": []}')
    path = tmp_path / "cdpd.toml"
    path.write_text(_complete(block))
    code = cli.main(["check-config", "--config", str(path)])
    assert code == cli.EXIT_OK, capsys.readouterr().err


def test_a_name_with_a_space_is_explained_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cdpd.toml"
    path.write_text(
        SOURCE.format(name="website")
        + '[[destinations]]\nname = "h"\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
        '[[destinations.actions]]\nname = "big orders"\nsubscribe = \'type = "track"\'\n'
    )
    assert cli.main(["check-config", "--config", str(path)]) == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert (
        "destinations[0].actions[0].name: not a valid name: a name is 1 to 100 characters" in error
    )
    assert "regex" not in error
