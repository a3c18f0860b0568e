"""`cdpd users` and `cdpd tokens`: people, their roles, and API tokens, in the console's state
file. A password is read from the terminal (or one line of standard input with
--password-stdin); a token is printed once and only its hash is kept."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from cdpd.config import Config
from cdpd.console import access, state
from cdpd.console.local import SqliteState
from cdpd.console.seams import People

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMMANDS = ("users", "tokens")
MIN_PASSWORD_CHARS = 10


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    users = commands.add_parser("users", parents=[common], help="people who sign in to the console")
    u = users.add_subparsers(dest="users_command", required=True)
    add = u.add_parser("add", parents=[common], help="add a person with a role in a workspace")
    add.add_argument("name", help="the name the person signs in with")
    _role_arguments(add)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    grant = u.add_parser("grant", parents=[common], help="give a person a role in a workspace")
    grant.add_argument("name", help="the person")
    _role_arguments(grant)
    passwd = u.add_parser("passwd", parents=[common], help="change a person's password")
    passwd.add_argument("name", help="the person")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the new password from standard input"
    )
    remove = u.add_parser("remove", parents=[common], help="remove a person and their sessions")
    remove.add_argument("name", help="the person")
    people = u.add_parser("list", parents=[common], help="people and their roles")
    people.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    tokens = commands.add_parser("tokens", parents=[common], help="API tokens for a workspace")
    t = tokens.add_subparsers(dest="tokens_command", required=True)
    create = t.add_parser("create", parents=[common], help="create a token (printed once)")
    create.add_argument("--name", required=True, help="what the token is for")
    _role_arguments(create)
    listing = t.add_parser("list", parents=[common], help="tokens (never their values)")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    revoke = t.add_parser("revoke", parents=[common], help="revoke a token by its id")
    revoke.add_argument("id", type=int, help="the token's id (cdpd tokens list)")


def _role_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", required=True, help="a [[workspaces]] name")
    parser.add_argument(
        "--role", required=True, choices=access.ROLES, help="what the role may do in the workspace"
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    workspace = getattr(args, "workspace", None)
    if workspace is not None and workspace not in {w.name for w in cfg.workspaces}:
        known = ", ".join(w.name for w in cfg.workspaces) or "none"
        return _fail(f"no workspace is named {workspace!r} (known: {known})", EXIT_USAGE)
    if args.command == "users":
        return asyncio.run(_users(cfg, args))
    if cfg.storage.backend == "jetstream":
        return _fail(
            "API tokens are not accepted on the JetStream backend: use the admin token"
            " (docs/scaling.md)",
            EXIT_USAGE,
        )
    return asyncio.run(_tokens(cfg.console.state_path(cfg.storage.data_dir), args))


@asynccontextmanager
async def _people(cfg: Config) -> AsyncIterator[People]:
    """The console's people where this config keeps them: the state file, or the cluster."""
    if cfg.storage.backend == "jetstream":
        from cdpd.cluster.console_state import people_in_cluster

        async with people_in_cluster(cfg) as people:
            yield people
        return
    async with state.connect(cfg.console.state_path(cfg.storage.data_dir)) as conn:
        yield SqliteState(conn)


async def _users(cfg: Config, args: argparse.Namespace) -> int:
    command = args.users_command
    password_hash = None
    if command in ("add", "passwd"):
        password = _read_password(args.password_stdin)
        if password is None:
            return EXIT_USAGE
        password_hash = access.hash_password(password)
    async with _people(cfg) as people:
        if command == "add":
            assert password_hash is not None
            if not await people.add_person(args.name, password_hash, args.workspace, args.role):
                return _fail(f"{args.name!r} already exists (cdpd users grant gives a role)")
            print(f"{args.name} added: {args.role} of {args.workspace}")
        elif command == "grant":
            if not await people.set_role(args.name, args.workspace, args.role):
                return _fail(f"there is no person named {args.name!r}")
            print(f"{args.name} is now {args.role} of {args.workspace}")
        elif command == "passwd":
            assert password_hash is not None
            if not await people.set_password(args.name, password_hash):
                return _fail(f"there is no person named {args.name!r}")
            print(f"password of {args.name} changed; their sessions have ended")
        elif command == "remove":
            if not await people.remove_person(args.name):
                return _fail(f"there is no person named {args.name!r}")
            print(f"{args.name} removed")
        else:
            found = await people.people()
            if args.json:
                listed = [{"name": p.name, "roles": p.roles} for p in found]
                print(msgspec.json.encode(listed).decode())
            for person in [] if args.json else found:
                roles = ", ".join(f"{r} of {w}" for w, r in sorted(person.roles.items()))
                print(f"{person.name:<24} {roles or '(no workspace)'}")
    return EXIT_OK


async def _tokens(path: Any, args: argparse.Namespace) -> int:
    async with state.connect(path) as conn:
        if args.tokens_command == "create":
            token = access.new_token()
            token_id = await state.add_token(conn, args.name, args.workspace, args.role, token)
            print(token)
            print(
                f"token {token_id} ({args.role} of {args.workspace}); it is shown only now",
                file=sys.stderr,
            )
        elif args.tokens_command == "list":
            found = await state.tokens(conn)
            if args.json:
                print(msgspec.json.encode(found).decode())
            for live in [] if args.json else found:
                revoked = f"revoked {live.revoked_at}" if live.revoked_at else "live"
                print(
                    f"{live.id:<5} {live.name:<20} {live.role} of {live.workspace:<16} "
                    f"{live.prefix}...  created {live.created_at}  {revoked}"
                )
        elif not await state.revoke_token(conn, args.id):
            return _fail(f"no live token has id {args.id}")
        else:
            print(f"token {args.id} revoked")
    return EXIT_OK


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            _fail("the passwords differ", EXIT_USAGE)
            return None
    if len(password) < MIN_PASSWORD_CHARS:
        _fail(f"a password needs at least {MIN_PASSWORD_CHARS} characters", EXIT_USAGE)
        return None
    return password


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"cdpd: {message}", file=sys.stderr)
    return code
