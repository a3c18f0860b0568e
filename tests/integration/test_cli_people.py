"""`cdpd users` and `cdpd tokens` against the console's state file, and what a running cdpd
makes of them: a new password ends sessions, a removed person cannot sign in, a revoked token
is refused."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd.app import running
from cdpd.config import Config
from tests.console_support import ADMIN_TOKEN, PASSWORD, signed_in, workspaces_toml

MakeConfig = Callable[..., Config]


def run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    stdin: str = "",
) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli.main([*args, "--config", str(tmp_path / "cdpd.toml")])


def test_users_are_added_with_an_argon2_hash_and_a_role(
    make_config: MakeConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(workspaces_toml("http://127.0.0.1:9"))
    add = ["users", "add", "ada", "--workspace", "acme", "--role", "owner", "--password-stdin"]
    assert run(tmp_path, monkeypatch, add, PASSWORD + "\n") == 0
    assert run(tmp_path, monkeypatch, add, PASSWORD + "\n") == 1  # already there
    grant = ["users", "grant", "ada", "--workspace", "globex", "--role", "read-only"]
    assert run(tmp_path, monkeypatch, grant) == 0
    nowhere = ["users", "grant", "ada", "--workspace", "nowhere", "--role", "owner"]
    assert run(tmp_path, monkeypatch, nowhere) == 2
    short = ["users", "add", "bob", "--workspace", "acme", "--role", "member", "--password-stdin"]
    assert run(tmp_path, monkeypatch, short, "short\n") == 2
    assert run(tmp_path, monkeypatch, ["users", "list"]) == 0
    out = capsys.readouterr()
    assert "ada                      owner of acme, read-only of globex" in out.out
    assert "at least 10 characters" in out.err
    assert "no workspace is named 'nowhere'" in out.err
    db = sqlite3.connect(config.console.state_path(config.storage.data_dir))
    ((password_hash,),) = db.execute("SELECT password_hash FROM people").fetchall()
    assert password_hash.startswith("$argon2id$")
    assert PASSWORD not in password_hash


async def test_passwd_ends_sessions_and_remove_ends_the_person(
    make_config: MakeConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
) -> None:
    config = make_config(workspaces_toml("http://127.0.0.1:9"))
    add = ["users", "add", "ada", "--workspace", "acme", "--role", "owner", "--password-stdin"]
    assert await asyncio.to_thread(run, tmp_path, monkeypatch, add, PASSWORD + "\n") == 0
    async with running(config) as server, signed_in(server.url, "ada") as (client, _):
        async with client.get("/console/w/acme/", allow_redirects=False) as resp:
            assert resp.status == 200
        passwd = ["users", "passwd", "ada", "--password-stdin"]
        new = "another long password\n"
        assert await asyncio.to_thread(run, tmp_path, monkeypatch, passwd, new) == 0
        async with client.get("/console/w/acme/", allow_redirects=False) as resp:
            assert resp.status == 303  # signed out
        remove = ["users", "remove", "ada"]
        assert await asyncio.to_thread(run, tmp_path, monkeypatch, remove) == 0
        async with http.post(
            f"{server.url}/console/signin",
            data={"name": "ada", "password": new.strip()},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 401


async def test_tokens_are_shown_once_stored_hashed_and_revocable(
    make_config: MakeConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    http: aiohttp.ClientSession,
) -> None:
    config = make_config(workspaces_toml("http://127.0.0.1:9"))
    create = ["tokens", "create", "--name", "ci", "--workspace", "acme", "--role", "member"]
    assert await asyncio.to_thread(run, tmp_path, monkeypatch, create) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("cdpd_")
    assert await asyncio.to_thread(run, tmp_path, monkeypatch, ["tokens", "list"]) == 0
    table = capsys.readouterr().out
    assert token not in table
    assert "member of acme" in table
    assert f"{token[:12]}..." in table
    listing = ["tokens", "list", "--json"]
    assert await asyncio.to_thread(run, tmp_path, monkeypatch, listing) == 0
    [listed] = msgspec.json.decode(capsys.readouterr().out)
    assert token not in str(listed)
    assert listed["workspace"] == "acme"
    assert listed["prefix"] == token[:12]
    db = sqlite3.connect(config.console.state_path(config.storage.data_dir))
    assert token not in str(db.execute("SELECT * FROM api_tokens").fetchall())
    async with running(config) as server:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{server.url}/admin/deliveries", headers=headers) as resp:
            assert resp.status == 200
            assert [d["destination"] for d in (await resp.json())["destinations"]] == ["hook_a"]
        revoke = ["tokens", "revoke", str(listed["id"])]
        assert await asyncio.to_thread(run, tmp_path, monkeypatch, revoke) == 0
        assert await asyncio.to_thread(run, tmp_path, monkeypatch, revoke) == 1
        async with http.get(f"{server.url}/admin/deliveries", headers=headers) as resp:
            assert resp.status == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(f"{server.url}/admin/deliveries", headers=admin) as resp:
            assert resp.status == 200
