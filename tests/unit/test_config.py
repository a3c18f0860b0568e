import re
from pathlib import Path

import pytest

from cdpd import cli
from cdpd.config import ConfigError, load, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "cdpd.toml"


def test_the_example_config_loads() -> None:
    config = load(EXAMPLE)
    assert config.server.listen == "127.0.0.1:8088"
    assert [s.name for s in config.sources] == ["website", "backend"]
    assert [(d.name, type(d).__name__) for d in config.destinations] == [
        ("events-archive", "FileDestination")
    ]
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
            '[[destinations]]\nname = "d"\ntype = "carrier-pigeon"\n',
            "destinations[0].type: Invalid value 'carrier-pigeon' (expected one of: webhook, ",
        ),
        ('[[destinations]]\nname = "d"\ntype = "webhook"\n', "missing required field `url`"),
        (
            '[[destinations]]\nname = "d"\ntype = "webhook"\nurl = "http://x"\nordering = "x"\n',
            "destinations[0].ordering: Invalid enum value 'x' (expected one of: none, user)",
        ),
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


def test_warehouses() -> None:
    config = parse(
        '[[sources]]\nname = "web"\nwrite_key = "k"\n'
        '[[warehouses]]\nname = "local"\ntype = "sqlite"\n'
        '[[warehouses]]\nname = "pg"\ntype = "postgres"\ndsn = "postgresql://127.0.0.1/cdpd"\n'
    )
    local, pg = config.warehouses
    assert local.interval_s == 900
    assert pg.max_columns == 1600
    assert load(EXAMPLE).warehouses[0].name == "local"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[warehouses]]\nname = "w"\ntype = "bigquery"\n',
            "warehouses[0].type: Invalid value 'bigquery' (expected one of: sqlite, postgres)",
        ),
        (
            '[[warehouses]]\nname = "w"\ntype = "postgres"\ndsn = "mysql://x"\n',
            "warehouses[0].dsn: Expected `str` matching regex",
        ),
        (
            '[[warehouses]]\nname = "w"\ntype = "sqlite"\ninterval_s = 0\n',
            "warehouses[0].interval_s: Expected `float` > 0",
        ),
        (
            '[[warehouses]]\nname = "w"\ntype = "sqlite"\n'
            '[[warehouses]]\nname = "w"\ntype = "sqlite"\n',
            "warehouses[1].name: 'w' is used twice",
        ),
        (
            '[storage]\ndata_dir = "/x"\n[[warehouses]]\nname = "w"\ntype = "sqlite"\n'
            'path = "/x/outbox.sqlite3"\n',
            "warehouses[0].path: '/x/outbox.sqlite3' is the outbox or another warehouse",
        ),
        (
            '[[sources]]\nname = "web-site"\nwrite_key = "a"\n'
            '[[sources]]\nname = "web_site"\nwrite_key = "b"\n'
            '[[warehouses]]\nname = "w"\ntype = "sqlite"\n',
            "sources[1].name: 'web_site' has the same warehouse schema ('web_site') as 'web-site'",
        ),
    ],
)
def test_warehouse_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, origin="cdpd.toml")
    assert message in str(caught.value)


def _with_conf_d(tmp_path: Path, fragments: dict[str, str]) -> Path:
    main = tmp_path / "cdpd.toml"
    main.write_text('include = "conf.d"\n[[sources]]\nname = "web"\nwrite_key = "wk_web"\n')
    (tmp_path / "conf.d").mkdir()
    for name, text in fragments.items():
        (tmp_path / "conf.d" / name).write_text(text)
    return main


def test_a_conf_d_directory_adds_entries_in_name_order(tmp_path: Path) -> None:
    main = _with_conf_d(
        tmp_path,
        {
            "20-files.toml": (
                f'[[destinations]]\nname = "f"\ntype = "file"\npath = "{tmp_path}/f"\n'
            ),
            "10-app.toml": '[[sources]]\nname = "app"\nwrite_key = "wk_app"\n',
            "notes.txt": "[server]\n",  # not a .toml file: ignored
        },
    )
    config = load(main)
    assert [s.name for s in config.sources] == ["web", "app"]
    assert [d.name for d in config.destinations] == ["f"]


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ('[server]\nlisten = "x:1"\n', "50-bad.toml: server: an included file may only add"),
        (
            '[[sources]]\nname = "web"\nwrite_key = "k2"\n',
            "sources[1] (in conf.d/50-bad.toml).name: 'web' is used twice",
        ),
        ("[[sources]]\nname = 3\n", "sources[1] (in conf.d/50-bad.toml).name: Expected `str`"),
        ("[[sources\n", "50-bad.toml: not valid TOML"),
    ],
)
def test_a_bad_fragment_is_a_config_error_naming_it(
    tmp_path: Path, fragment: str, message: str
) -> None:
    main = _with_conf_d(tmp_path, {"50-bad.toml": fragment})
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(main)


def test_a_fragment_s_workspace_entry_adds_to_a_known_workspace(tmp_path: Path) -> None:
    main = tmp_path / "cdpd.toml"
    main.write_text(
        'include = "conf.d"\n[[sources]]\nname = "web"\nwrite_key = "wk_web"\n'
        '[[workspaces]]\nname = "acme"\nsources = ["web"]\n'
    )
    (tmp_path / "conf.d").mkdir()
    hook = f'[[destinations]]\nname = "{{0}}"\ntype = "file"\npath = "{tmp_path}/{{0}}"\n'
    (tmp_path / "conf.d" / "a.toml").write_text(
        hook.format("f") + '[[workspaces]]\nname = "acme"\ndestinations = ["f"]\n'
    )
    (tmp_path / "conf.d" / "b.toml").write_text(
        hook.format("g") + '[[workspaces]]\nname = "globex"\ndestinations = ["g"]\n'
    )
    config = load(main)
    assert [(w.name, w.sources, w.destinations) for w in config.workspaces] == [
        ("acme", ["web"], ["f"]),
        ("globex", [], ["g"]),
    ]


def test_a_missing_include_directory_is_an_error(tmp_path: Path) -> None:
    main = tmp_path / "cdpd.toml"
    main.write_text('include = "conf.d"\n')
    with pytest.raises(ConfigError, match=r"include: .* is not a directory"):
        load(main)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[identity]\nspace = "s"\n', "identity.access_tokens: give at least one"),
        ('[identity]\nspace = "s s"\naccess_tokens = ["t"]\n', "identity.space"),
        (
            '[identity]\nspace = "s"\naccess_tokens = ["t"]\n'
            '[[identity.identifiers]]\ntype = "email"\nblocked_patterns = ["("]\n',
            "identity.identifiers[0].blocked_patterns: '(' is not a regex",
        ),
        (
            '[identity]\nspace = "s"\naccess_tokens = ["t"]\n'
            '[[identity.identifiers]]\ntype = "email"\n[[identity.identifiers]]\ntype = "email"\n',
            "identity.identifiers[1].type: 'email' is used twice",
        ),
        (
            '[identity]\nspace = "s"\naccess_tokens = ["t"]\n'
            '[[identity.identifiers]]\ntype = "Email"\n',
            "identity.identifiers[0].type",
        ),
        (
            '[identity]\nspace = "s"\naccess_tokens = ["t"]\n'
            '[[identity.identifiers]]\ntype = "email"\nwindow = "daily"\n',
            "expected one of: annually, ever, monthly, weekly",
        ),
    ],
)
def test_identity_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        parse(text)
    assert message in str(raised.value)


def test_identity_defaults_and_tokens_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROFILE_TOKENS", "a, b")
    config = parse('[identity]\nspace = "s"\naccess_tokens_env = "PROFILE_TOKENS"\n')
    assert config.identity is not None
    assert config.identity.resolved_tokens() == ["a", "b"]
    assert config.identity.events_history_days == 14
    assert config.identity.rate_limit_per_s == 0
