"""The README's benchmark lines run as written: with the project's venv, on scripts that exist
and take --help."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
SCRIPTS = sorted(set(re.findall(r"python3? (bench/[a-z_]+\.py)", README)))


def test_every_bench_line_uses_the_projects_venv() -> None:
    bare = re.findall(r"(?<![/\w])python3? bench/\w+\.py", README)
    assert bare == []
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_documented_bench_script_runs(script: str) -> None:
    done = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
