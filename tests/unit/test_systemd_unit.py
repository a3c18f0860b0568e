"""systemd/cdpd.service and systemd/cdpd.sysusers: the settings the daemon relies on, and
`systemd-analyze verify` / `systemd-sysusers --dry-run` where those tools are installed."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cdpd.config import DEFAULT_CONFIG_PATH, ServerConfig
from tests.helpers import PROJECT_ROOT

UNIT = PROJECT_ROOT / "systemd" / "cdpd.service"
SYSUSERS = PROJECT_ROOT / "systemd" / "cdpd.sysusers"
EXEC_START = f"/opt/cdpd/venv/bin/cdpd serve --config {DEFAULT_CONFIG_PATH}"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
SYSTEMD_SYSUSERS = shutil.which("systemd-sysusers") or "/usr/bin/systemd-sysusers"
TRUE = shutil.which("true") or "/bin/true"
# systemd(1) booleans
YES = {"1", "yes", "y", "true", "t", "on"}


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, empty_lines_in_values=False
    )
    # systemd keys are case-sensitive; configparser lower-cases them unless told otherwise.
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def seconds(value: str) -> float:
    """A systemd time span as used in this unit: "30", "30s", "1min 30s"."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit_name in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit_name]
    return total


def test_it_is_a_notify_service_that_only_its_main_process_may_notify() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == EXEC_START


def test_watchdog_restart_and_a_stop_timeout_longer_than_the_drain() -> None:
    service = unit()["Service"]
    # cdpd pings every WatchdogSec/2; a zero or missing value would turn the watchdog off.
    assert seconds(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    # systemd must not SIGKILL cdpd while it is still draining requests.
    assert seconds(service["TimeoutStopSec"]) > ServerConfig().shutdown_timeout_s


def test_runs_as_a_dedicated_user_with_a_state_directory() -> None:
    service = unit()["Service"]
    assert service["User"] == "cdpd"
    assert service["User"] not in {"root", "0"}
    assert service["Group"] == "cdpd"
    assert service["StateDirectory"] == "cdpd"
    assert service["WorkingDirectory"] == "/var/lib/cdpd"  # where a relative data_dir goes
    assert int(service["LimitNOFILE"]) >= 65536


def test_hardening() -> None:
    service = unit()["Service"]
    assert service["ProtectSystem"] == "strict"
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert service[key].lower() in YES, key
    assert service["SystemCallArchitectures"] == "native"
    assert service["SystemCallFilter"] == "@system-service"
    assert service["UMask"] == "0027"
    assert service["CapabilityBoundingSet"] == ""
    assert service["AmbientCapabilities"] == ""
    # sd_notify needs AF_UNIX; serving needs the inet families.
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # It breaks Python C extensions that use libffi closures.
    assert "MemoryDenyWriteExecute" not in service
    # StateDirectory= already makes /var/lib/cdpd writable under ProtectSystem=strict.
    assert "ReadWritePaths" not in service


def verify(unit_file: Path) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify`; returns the exit code and the lines about this unit."""
    args = [SYSTEMD_ANALYZE, "verify"]
    version = subprocess.run(
        [SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    if int(version.split()[1]) >= 250:
        # Since systemd 250: the exit code then reflects this unit only, not the units it names
        # (multi-user.target, network-online.target), which are the host's business.
        args.append("--recursive-errors=no")
    result = subprocess.run(
        [*args, str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    # Problems with this unit name its file or unit name; anything else (a warning about one of
    # the host's own units, say) is about the machine the test runs on, not about cdpd.
    lines = (result.stdout + result.stderr).splitlines()
    ours = [line for line in lines if unit_file.name in line or str(unit_file) in line]
    return result.returncode, ours


needs_systemd_analyze = pytest.mark.skipif(
    not Path(SYSTEMD_ANALYZE).exists(),
    reason="systemd-analyze is not installed (Debian/Ubuntu package: systemd), "
    "so the unit file is not checked by systemd itself",
)


@needs_systemd_analyze
def test_systemd_analyze_verify_finds_no_problem(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists and is executable, and /opt/cdpd is not
    # installed where the tests run: point a copy at a program that exists.
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC_START}\n") == 1
    copy = tmp_path / "cdpd.service"
    copy.write_text(text.replace(f"ExecStart={EXEC_START}", f"ExecStart={TRUE} serve"))

    code, problems = verify(copy)

    assert problems == []
    assert code == 0


@needs_systemd_analyze
def test_systemd_analyze_verify_of_the_real_file_only_misses_the_installed_program(
    tmp_path: Path,
) -> None:
    # The unmodified file: its one problem here must be the program that is not installed.
    program = Path(EXEC_START.split()[0])
    if program.exists():
        pytest.skip(f"{program} is installed here; the test above covers this case")
    copy = tmp_path / UNIT.name
    shutil.copyfile(UNIT, copy)

    code, problems = verify(copy)

    assert len(problems) == 1, problems
    assert f"Command {program} is not executable" in problems[0]
    assert code != 0


def test_sysusers_creates_the_system_user_the_unit_runs_as() -> None:
    entries = [
        line.split(maxsplit=3)
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(entries) == 1
    kind, name, uid, _rest = entries[0]
    assert (kind, name, uid) == ("u", unit()["Service"]["User"], "-")  # "-": a dynamic system uid


@pytest.mark.skipif(
    not Path(SYSTEMD_SYSUSERS).exists(),
    reason="systemd-sysusers is not installed (Debian/Ubuntu package: systemd)",
)
def test_systemd_sysusers_accepts_the_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [SYSTEMD_SYSUSERS, f"--root={tmp_path}", "--dry-run", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'cdpd'" in result.stderr
