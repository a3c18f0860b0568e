"""One daemon per data folder, and one line (not a traceback) when a second one cannot start:
the data folder is locked and the port bound before the outbox is touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT_ROOT, config_text, query, spawn_cdpd
from tests.integration.test_delivery import closed_port_url, hook


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdpd", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )


async def test_a_second_daemon_on_the_same_data_folder_exits_with_one_line(
    tmp_path: Path, data_dir: Path
) -> None:
    first = tmp_path / "first.toml"
    # A destination that keeps its deliveries retrying: a second daemon's start-up recovery
    # would mark them dead (its config lacks the destination).
    first.write_text(config_text(data_dir, hook("hook", closed_port_url())))
    daemon = await spawn_cdpd(first)
    try:
        second = tmp_path / "second.toml"
        second.write_text(config_text(data_dir))
        before = query(data_dir, "SELECT name, seq FROM consumers ORDER BY name")
        done = _serve(second)
        assert done.returncode == 1
        assert done.stderr == f"cdpd: another cdpd (pid {daemon.proc.pid}) is using {data_dir}\n"
        assert "listening" not in done.stdout
        assert query(data_dir, "SELECT name, seq FROM consumers ORDER BY name") == before
    finally:
        assert await daemon.stop() == 0
    # The lock goes with the process: the next start is fine.
    daemon = await spawn_cdpd(first)
    assert await daemon.stop() == 0


async def test_a_port_in_use_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    first = tmp_path / "first.toml"
    first.write_text(config_text(data_dir))
    daemon = await spawn_cdpd(first)
    try:
        listen = daemon.url.removeprefix("http://")
        other_dir = tmp_path / "other"
        second = tmp_path / "second.toml"
        second.write_text(config_text(other_dir, listen=listen))
        done = _serve(second)
        assert done.returncode == 1
        assert done.stderr == f"cdpd: cannot listen on {listen}: the port is in use\n"
        assert not (other_dir / "outbox.sqlite3").exists()  # nothing was opened
    finally:
        assert await daemon.stop() == 0
