"""Where `*_env` secrets and the admin token come from: the environment, else a systemd
credential (`LoadCredential=`, read from `$CREDENTIALS_DIRECTORY`); a disabled destination
needs none."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdpd import cli
from cdpd.config import parse
from cdpd.destinations import registry

MIXPANEL = '[[destinations]]\nname = "mp"\ntype = "mixpanel"\nproject_token_env = "CDPD_T_MP"\n'


def test_a_systemd_credential_gives_an_env_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDPD_T_MP", raising=False)
    monkeypatch.delenv("CDPD_T_ADMIN", raising=False)
    (tmp_path / "CDPD_T_MP").write_text("token-from-credential\n")
    (tmp_path / "CDPD_T_ADMIN").write_text("admin-from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse(MIXPANEL + '[admin]\ntoken_env = "CDPD_T_ADMIN"\n')
    assert config.admin.resolved_token() == "admin-from-credential"
    registry.build(config.destinations[0])  # found: no ConfigError
    monkeypatch.setenv("CDPD_T_MP", "from-environment")  # the environment wins
    monkeypatch.setenv("CDPD_T_ADMIN", "admin-from-environment")
    assert config.admin.resolved_token() == "admin-from-environment"


def test_neither_is_a_config_error_that_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDPD_T_MP", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse(MIXPANEL)
    with pytest.raises(Exception, match="neither an environment variable nor a systemd credential"):
        registry.build(config.destinations[0])


def test_a_disabled_destination_needs_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CDPD_T_MP", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "cdpd.toml"
    path.write_text(MIXPANEL + "enabled = false\n")
    assert cli.main(["check-config", "--config", str(path)]) == cli.EXIT_OK, capsys.readouterr()
