from pathlib import Path

import pytest

from cdpd import cli
from cdpd.config import ConfigError, load, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "cdpd.toml"


def test_the_example_config_loads() -> None:
    config = load(EXAMPLE)
    assert config.server.listen == "127.0.0.1:8088"
    assert [s.name for s in config.sources] == ["website", "backend"]
    assert config.destinations[0].url == "http://127.0.0.1:9000/events"
    assert Path(config.storage.data_dir).is_absolute()


def test_defaults() -> None:
    config = parse(b"")
    assert config.storage.synchronous == "normal"
    assert config.storage.dedup_window_s == 86400
    assert config.server.max_request_bytes == 512_000
    assert config.server.base_url == "http://127.0.0.1:8088"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nlisten = 8088\n", "server.listen: Expected `str`, got `int`"),
        ('[server]\nlisen = "x"\n', "server: Object contains unknown field `lisen`"),
        ('[server]\nlisten = "localhost"\n', "server.listen: expected HOST:PORT"),
        (
            '[storage]\nsynchronous = "off"\n',
            "storage.synchronous: Invalid enum value 'off' (expected one of: full, normal)",
        ),
        ("[storage]\ndedup_window_s = -1\n", "storage.dedup_window_s: Expected `int` >= 0"),
        ('[[sources]]\nname = "a"\n', "sources[0]: Object missing required field `write_key`"),
        (
            '[[sources]]\nname = "a"\nwrite_key = "k"\n[[sources]]\nname = "b"\nwrite_key = "k"\n',
            "sources[1].write_key: 'k...' is used twice",
        ),
        (
            '[[destinations]]\nname = "d"\ntype = "kafka"\n',
            "destinations[0].type: Invalid value 'kafka' (expected one of: webhook)",
        ),
        ('[[destinations]]\nname = "d"\ntype = "webhook"\n', "missing required field `url`"),
        (
            '[[destinations]]\nname = "d"\ntype = "webhook"\nurl = "http://x"\nsources = ["s"]\n',
            "destinations[0].sources: no source is named 's'",
        ),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, origin="cdpd.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("cdpd.toml: ")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load("/nonexistent/cdpd.toml")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", str(EXAMPLE)]) == 0
    assert "ok (2 sources, 1 destinations" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\nsynchronous = "sometimes"\n')
    assert cli.main(["check-config", "--config", str(bad)]) == 2
    assert "storage.synchronous" in capsys.readouterr().err


def test_config_path_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDPD_CONFIG", str(EXAMPLE))
    assert cli.main(["check-config"]) == 0
    assert str(EXAMPLE) in capsys.readouterr().out
