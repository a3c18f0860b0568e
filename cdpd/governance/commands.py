"""`cdpd plans`, `cdpd violations` and `cdpd schema`: argument parsing and output; the work is
in plans.py, infer.py and store.py."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec

from cdpd import config
from cdpd.governance import plans, store

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMMANDS = ("plans", "violations", "schema")


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    plans_parser = commands.add_parser("plans", parents=[common], help="tracking plans")
    plan_commands = plans_parser.add_subparsers(dest="plans_command", required=True)
    plan_commands.add_parser("check", parents=[common], help="load and compile every plan")


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.command == "plans" and args.plans_command == "check":
        return _check(cfg)
    raise AssertionError(f"unhandled command {args.command}")


def _check(cfg: config.Config) -> int:
    if not cfg.tracking_plans:
        print("no tracking plans are configured")
        return EXIT_OK
    try:
        loaded = plans.load_all(cfg.tracking_plans)
    except plans.PlanError as exc:
        print(f"cdpd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for entry in cfg.tracking_plans:
        plan = loaded[entry.name]
        rules = sum(len(versions) for versions in plan.rules.values())
        users = [s.name for s in cfg.sources if s.tracking_plan == entry.name]
        print(
            f"{entry.name}: ok ({rules} rules, {len(plan.track_events())} track events; "
            f"sources: {', '.join(users) or 'none'}) from {entry.path}"
        )
    return EXIT_OK


_ = (asyncio, msgspec, store)
