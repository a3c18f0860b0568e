"""Mixpanel's GDPR API v3 for deletions as its documentation gives it (docs.mixpanel.com:
"GDPR API", "Create a Deletion Task"):

- `POST /api/app/data-deletions/v3.0/?token=<project token>` (else a 400), with
  `Authorization: Bearer <GDPR OAuth token>` or a service account's Basic auth (else a 401),
  `Content-Type: application/json`, JSON `{"distinct_ids": [...], "compliance_type": "GDPR" |
  "CCPA"}`: distinct_ids a non-empty array of strings, at most 2,000 (else a 400);
- a token of another project is a 403;
- 200 `{"status": "ok", "results": {"task_id": "..."}}`; errors `{"status": "error",
  "error": "..."}`.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

import msgspec
from aiohttp import web

from tests.contracts.base import ContractServer, Handler, json_response

MAX_IDS = 2000
PATH = "/api/app/data-deletions/v3.0/"


class MixpanelDeletionContract(ContractServer):
    def __init__(
        self,
        *,
        token: str = "mp_token",
        oauth_token: str = "mp_gdpr_oauth",
        service_account: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        self._accepted_auth = {f"Bearer {oauth_token}"}
        if service_account is not None:
            raw = ":".join(service_account).encode()
            self._accepted_auth.add("Basic " + base64.b64encode(raw).decode())
        self.tasks: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def routes(self) -> dict[str, Handler]:
        return {PATH: self._create}

    @property
    def deleted(self) -> list[str]:
        return [d for task in self.tasks.values() for d in task["distinct_ids"]]

    async def _create(self, request: web.Request, body: bytes) -> web.Response:
        token = request.query.get("token")
        if not token:
            return _error(400, "token query parameter is required")
        if request.headers.get("Authorization") not in self._accepted_auth:
            return _error(401, "Invalid credentials")
        if token != self.token:
            return _error(403, "the token does not belong to a project you can access")
        if request.content_type != "application/json":
            return _error(400, "Content-Type must be application/json")
        try:
            asked = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return _error(400, "invalid JSON")
        problem = _problem(asked)
        if problem:
            return _error(400, problem)
        task_id = f"task-{next(self._ids)}"
        self.tasks[task_id] = asked
        return json_response(200, {"status": "ok", "results": {"task_id": task_id}})


def _problem(asked: Any) -> str | None:
    if not isinstance(asked, dict):
        return "the request body must be a JSON object"
    ids = asked.get("distinct_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return "distinct_ids must be a non-empty array of strings"
    if len(ids) > MAX_IDS:
        return f"at most {MAX_IDS} distinct_ids may be deleted in one request"
    if asked.get("compliance_type") not in ("GDPR", "CCPA"):
        return 'compliance_type must be "GDPR" or "CCPA"'
    return None


def _error(status: int, error: str) -> web.Response:
    return json_response(status, {"status": "error", "error": error})
