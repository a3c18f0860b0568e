"""What the regulation tests share: the admin calls, waiting for a regulation to settle, and
the proof that a user is gone: every column of every table of the outbox and of a warehouse
searched for the user's id."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from cdpd.app import Running
from tests.helpers import WarehouseProbe, outbox_path

ADMIN_TOKEN = "admin-secret"
ADMIN = f'[admin]\ntoken = "{ADMIN_TOKEN}"\n'
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SETTLED = ("FINISHED", "PARTIAL_SUCCESS", "FAILED", "NOT_SUPPORTED")
# The only outbox tables that may still name a regulated user: the records of regulations.
RECORD_TABLES = ("regulations", "regulation_subjects", "regulation_targets", "suppressions")


# Bodies the regulation API refuses with a 400, and what its message names.
BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"regulationType": "FORGET", "subjectType": "USER_ID", "subjectIds": ["u"]}, "FORGET"),
    ({"regulationType": "SUPPRESS_ONLY", "subjectType": "USER_ID", "subjectIds": []}, "1"),
    (
        {"regulationType": "SUPPRESS_ONLY", "subjectType": "USER_ID", "subjectIds": ["u"] * 5001},
        "5000",
    ),
    ({"regulationType": "SUPPRESS_ONLY", "subjectType": "EMAIL", "subjectIds": ["u"]}, "EMAIL"),
    ({"regulationType": "SUPPRESS_ONLY", "subjectIds": ["u"]}, "subjectType"),
    ({"regulationType": "SUPPRESS_ONLY", "subjectType": "USER_ID", "subjectIds": [""]}, "1"),
]
# Every endpoint; each needs the admin token.
ENDPOINTS = (
    ("POST", "/regulations"),
    ("GET", "/regulations"),
    ("GET", "/regulations/abc"),
    ("GET", "/suppressions"),
)


class Served(Protocol):
    """A SQLite server (`cdpd.app.Running`) or a JetStream node (`cdpd.cluster.node.Node`)."""

    @property
    def url(self) -> str: ...


async def regulate(
    http: aiohttp.ClientSession,
    server: Served,
    kind: str,
    *users: str,
    source: str | None = None,
) -> str:
    path = "/regulations" if source is None else f"/regulations/sources/{source}"
    body = {"regulationType": kind, "subjectType": "USER_ID", "subjectIds": list(users)}
    async with http.post(f"{server.url}{path}", json=body, headers=AUTH) as response:
        answer = await response.json()
        assert response.status == 200, answer
    regulation_id: str = answer["data"]["regulateId"]
    return regulation_id


async def refused(
    http: aiohttp.ClientSession, server: Served, body: dict[str, Any], says: str
) -> None:
    """`body` is refused with a 400 naming `says`; an unknown source or regulation is a 404
    and the server stays healthy."""
    async with http.post(f"{server.url}/regulations", json=body, headers=AUTH) as response:
        answer = await response.json()
    assert (response.status, answer["code"]) == (400, "invalid_request"), answer
    assert says in answer["message"]
    async with http.post(
        f"{server.url}/regulations/sources/nowhere",
        json={"regulationType": "SUPPRESS_ONLY", "subjectType": "USER_ID", "subjectIds": ["u"]},
        headers=AUTH,
    ) as response:
        assert response.status == 404
    async with http.get(f"{server.url}/regulations/nope", headers=AUTH) as response:
        assert response.status == 404
    async with http.get(f"{server.url}/health") as response:
        assert response.status == 200


async def regulation(http: aiohttp.ClientSession, server: Served, regulation_id: str) -> Any:
    async with http.get(f"{server.url}/regulations/{regulation_id}", headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["data"]["regulation"]


async def settled(
    http: aiohttp.ClientSession, server: Served, regulation_id: str, timeout_s: float = 60
) -> Any:
    """The regulation once its overall status is final (a JetStream node is polled)."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = await regulation(http, server, regulation_id)
            if found["overallStatus"] in SETTLED:
                return found
            if not isinstance(server, Running):
                await asyncio.sleep(0.05)
                continue
            async with server.regulations.worked:
                await server.regulations.worked.wait()


def outbox_mentions(data_dir: Path, text: str) -> dict[str, int]:
    """Rows of each outbox table holding `text` in any column (the records of regulations
    left out)."""
    found: dict[str, int] = {}
    with sqlite3.connect(outbox_path(data_dir)) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
            )
        ]
        for table in tables:
            if table in RECORD_TABLES:
                continue
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
            condition = " OR ".join(f'instr(CAST("{c}" AS TEXT), ?) > 0' for c in columns)
            ((count,),) = conn.execute(
                f'SELECT count(*) FROM "{table}" WHERE {condition}', [text] * len(columns)
            )
            if count:
                found[table] = count
    return found


async def warehouse_mentions(warehouse: WarehouseProbe, text: str) -> dict[str, int]:
    """Rows of each warehouse table holding `text` in any column."""
    found: dict[str, int] = {}
    if warehouse.kind == "sqlite":
        tables = [
            r[0]
            for r in await warehouse.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            columns = [r[1] for r in await warehouse.fetch(f'PRAGMA table_info("{table}")')]
            condition = " OR ".join(f'instr(CAST("{c}" AS TEXT), $) > 0' for c in columns)
            ((count,),) = await warehouse.fetch(
                f'SELECT count(*) FROM "{table}" WHERE {condition}', *([text] * len(columns))
            )
            if count:
                found[table] = count
        return found
    tables = await warehouse.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_type = 'BASE TABLE'"
        " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
    )
    for schema, table in tables:
        name = f'"{schema}"."{table}"'
        ((count,),) = await warehouse.fetch(
            f"SELECT count(*) FROM {name} AS t WHERE strpos(t::text, $1) > 0", text
        )
        if count:
            found[f"{schema}.{table}"] = count
    return found
