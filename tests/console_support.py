"""Shared by the console's tests: a config with two workspaces, people added the way
`cdpd users add` adds them, and a signed-in HTTP client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from cdpd.config import Config
from cdpd.console import access, state

ADMIN_TOKEN = "admin-token-for-tests"
PASSWORD = "correct horse battery"


def workspaces_toml(sink_url: str) -> str:
    """Two workspaces: acme has the website source and hook_a; globex has backend and hook_b."""
    return (
        f'[admin]\ntoken = "{ADMIN_TOKEN}"\n'
        f'[[destinations]]\nname = "hook_a"\ntype = "webhook"\nurl = "{sink_url}/a"\n'
        'sources = ["website"]\n'
        f'[[destinations]]\nname = "hook_b"\ntype = "webhook"\nurl = "{sink_url}/b"\n'
        'sources = ["backend"]\n'
        '[[workspaces]]\nname = "acme"\ntitle = "Acme"\nsources = ["website"]\n'
        'destinations = ["hook_a"]\n'
        '[[workspaces]]\nname = "globex"\nsources = ["backend"]\ndestinations = ["hook_b"]\n'
    )


async def add_person(config: Config, name: str, roles: dict[str, str]) -> None:
    async with state.connect(config.console.state_path(config.storage.data_dir)) as conn:
        await state.add_person(conn, name, access.hash_password(PASSWORD))
        for workspace, role in roles.items():
            await state.set_role(conn, name, workspace, role)


async def add_token(config: Config, workspace: str, role: str) -> str:
    token = access.new_token()
    async with state.connect(config.console.state_path(config.storage.data_dir)) as conn:
        await state.add_token(conn, f"{workspace}-{role}", workspace, role, token)
    return token


@asynccontextmanager
async def signed_in(base_url: str, name: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A client holding the session cookie, and the CSRF token of its session."""
    jar = aiohttp.CookieJar(unsafe=True)  # the console is on 127.0.0.1 in tests
    async with aiohttp.ClientSession(base_url, cookie_jar=jar) as client:
        async with client.post(
            "/console/signin",
            data={"name": name, "password": PASSWORD},
            headers={"Origin": base_url},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303, await resp.text()
        async with client.get("/console/signin?next=/console/") as resp:
            pass
        csrf = await csrf_of(client)
        yield client, csrf


async def csrf_of(client: aiohttp.ClientSession) -> str:
    async with client.get("/console/", allow_redirects=True) as resp:
        text = await resp.text()
    found = re.search(r'data-csrf="([^"]+)"', text)
    assert found, text
    return found.group(1)


def data_dir_of(config: Config) -> Path:
    return Path(config.storage.data_dir)
