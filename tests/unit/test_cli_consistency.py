"""The command line is consistent: every subcommand and option says what it does, every listing
takes --json, --config goes before or after the subcommand, and times take relative forms."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cdpd import cli
from cdpd.model.timestamps import format_ms, parse_when_ms

LISTINGS = [
    ["outbox", "stats"],
    ["outbox", "tail"],
    ["rejects"],
    ["deliveries", "stats"],
    ["deliveries", "dead"],
    ["deliveries", "show", "m1"],
    ["destinations"],
    ["warehouse", "status"],
    ["violations"],
    ["schema", "website"],
    ["users", "list"],
    ["tokens", "list"],
    ["audiences", "list"],
    ["regulations", "list"],
]


def _leaves(
    parser: argparse.ArgumentParser, path: list[str]
) -> list[tuple[list[str], argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`cdpd {' '.join([*path, name])}` has no help text"
                found += _leaves(sub, [*path, name])
    return found or [(path, parser)]


def test_every_subcommand_and_option_has_help() -> None:
    for path, parser in _leaves(cli._parser(), []):
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"`cdpd {' '.join(path)}`: {action.dest} has no help text"


@pytest.mark.parametrize("command", LISTINGS, ids=lambda c: " ".join(c))
def test_every_listing_takes_json_and_config_anywhere(command: list[str]) -> None:
    parser = cli._parser()
    after = parser.parse_args([*command, "--json", "--config", "after.toml"])
    before = parser.parse_args(["--config", "before.toml", *command, "--json"])
    assert after.json is True
    assert (after.config, before.config) == ("after.toml", "before.toml")


def test_times_may_be_relative() -> None:
    at = 1_000_000_000_000
    assert parse_when_ms("15m", at) == at - 15 * 60_000
    assert parse_when_ms("2h ago", at) == at - 2 * 3_600_000
    assert parse_when_ms("7d", at) == at - 7 * 86_400_000
    assert parse_when_ms("now", at) == at
    assert format_ms(parse_when_ms("2026-11-01T12:00:00Z", at)) == "2026-11-01T12:00:00.000Z"
    with pytest.raises(ValueError, match="neither an ISO-8601 time nor a duration ago"):
        parse_when_ms("yesterday-ish", at)


def test_replay_refuses_since_after_until(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cdpd.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "var"}"\n'
        '[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
    )
    code = cli.main(
        [
            "replay",
            "--destination",
            "hook",
            "--since",
            "1h",
            "--until",
            "2h",
            "--config",
            str(config),
        ]
    )
    assert code == cli.EXIT_USAGE
    assert "must be before --until" in capsys.readouterr().err
