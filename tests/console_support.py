"""Shared by the console's tests: a config with two workspaces, people added the way
`cdpd users add` adds them (in the state file, or in the cluster's bucket on the JetStream
backend), a JetStream node's config, and a signed-in HTTP client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from cdpd.cluster.console_state import people_in_cluster
from cdpd.config import Config
from cdpd.console import access, state
from tests.cluster_support import jetstream_config, jetstream_text
from tests.governance_plans import write_plan
from tests.helpers import WRITE_KEY
from tests.jetstream_cluster import JetStreamCluster

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


def console_node_config(
    tmp_path: Path, cluster: JetStreamCluster, sink_url: str, node: str
) -> Config:
    """Node `node` of a JetStream backend: the two workspaces, source website under the
    tracking plan "main" (tests/governance_plans.py)."""
    plan = write_plan(tmp_path / "plan.json")
    extra = workspaces_toml(sink_url) + f'[[tracking_plans]]\nname = "main"\npath = "{plan}"\n'
    text = jetstream_text(tmp_path / node, cluster.urls, extra)
    text = text.replace(
        f'write_key = "{WRITE_KEY}"\n', f'write_key = "{WRITE_KEY}"\ntracking_plan = "main"\n', 1
    )
    return jetstream_config(tmp_path / f"{node}.toml", text)


async def add_cluster_person(config: Config, name: str, roles: dict[str, str]) -> None:
    """A person added as `cdpd users add` adds one on the JetStream backend."""
    async with people_in_cluster(config) as people:
        (workspace, role), *more = roles.items()
        assert await people.add_person(name, access.hash_password(PASSWORD), workspace, role)
        for workspace, role in more:
            assert await people.set_role(name, workspace, role)
