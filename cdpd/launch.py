"""The `cdpd` program's entry point. Commands that need only the config and their own module
(`cdpd audiences ...`) are parsed and run here without importing the rest of cdpd: cli.py
imports every stage, and through them every destination's and warehouse's client, most of a
second of CPU before a command could answer. Every other command goes to cli.py."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cdpd import __version__, config

EXIT_USAGE = 2
# command -> the module with its `add_parsers(commands, common)` and `run(cfg, args)`
LIGHT_COMMANDS = {"audiences": "cdpd.engage.commands"}


def base_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `cdpd` parser with `--config` and `--version`, and the parent every subcommand takes
    so that `--config` may come before or after it (after it, it wins)."""
    config_help = "TOML config file (default: $CDPD_CONFIG, then /etc/cdpd/cdpd.toml)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    parser = argparse.ArgumentParser(prog="cdpd", description="customer data platform daemon")
    parser.add_argument("--config", default=config.default_path(), help=config_help)
    parser.add_argument("--version", action="version", version=f"cdpd {__version__}")
    return parser, common


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    module_name = LIGHT_COMMANDS.get(command_of(words) or "")
    if module_name is None:
        from cdpd import cli

        return cli.main(argv)
    module = importlib.import_module(module_name)
    parser, common = base_parser()
    module.add_parsers(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args(words)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"cdpd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return int(module.run(cfg, args))


def command_of(words: list[str]) -> str | None:
    """The subcommand: the first word that is neither an option nor `--config`'s value."""
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif not word.startswith("-"):
            return word
        elif word in ("-h", "--help", "--version"):
            return None
    return None
