"""Amplitude's User Privacy API as its documentation gives it (amplitude.com/docs: User
Privacy API, "Delete users"):

- `POST /api/2/deletions/users`, Basic auth with the project's API key and secret key (else a
  401), `Content-Type: application/json` (else a 400), JSON with `amplitude_ids` (integers)
  and/or `user_ids` (strings), at most 100 ids in all (else a 400), `requester` (a string),
  `ignore_invalid_id` and `delete_from_org` (the strings "True" or "False");
- an id never seen is invalid: a 400 naming it, unless `ignore_invalid_id` is "True";
- 200 with the deletion jobs: `[{"day", "amplitude_ids": [{"amplitude_id", "requester",
  "requested_on_day"}], "status": "staging"}]`.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

import msgspec
from aiohttp import web

from tests.contracts.base import ContractServer, Handler, json_response

MAX_IDS = 100
FLAG_VALUES = ("True", "False")


class AmplitudeDeletionContract(ContractServer):
    def __init__(self, *, api_key: str = "amp_key", secret_key: str = "amp_secret") -> None:
        super().__init__()
        raw = f"{api_key}:{secret_key}".encode()
        self._authorization = "Basic " + base64.b64encode(raw).decode()
        self.known_users: dict[str, int] = {}  # user id -> amplitude id
        self.deleted: list[str] = []  # user ids, in order
        self.requesters: list[str | None] = []

    def routes(self) -> dict[str, Handler]:
        return {"/api/2/deletions/users": self._delete}

    def know(self, *user_ids: str) -> None:
        for user_id in user_ids:
            self.known_users.setdefault(user_id, 100_000 + len(self.known_users))

    async def _delete(self, request: web.Request, body: bytes) -> web.Response:
        if request.headers.get("Authorization") != self._authorization:
            return json_response(401, {"error": "Invalid API key or secret key"})
        if request.content_type != "application/json":
            return json_response(400, {"error": "Content-Type must be application/json"})
        try:
            asked = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return json_response(400, {"error": "Invalid JSON request body"})
        problem = _problem(asked)
        if problem:
            return json_response(400, {"error": problem})
        user_ids: list[str] = asked.get("user_ids", [])
        invalid = [u for u in user_ids if u not in self.known_users]
        if invalid and asked.get("ignore_invalid_id") != "True":
            return json_response(400, {"error": "Invalid user_ids", "invalid_user_ids": invalid})
        valid = [u for u in user_ids if u in self.known_users]
        self.deleted += valid
        self.requesters.append(asked.get("requester"))
        today = datetime.date.today().isoformat()
        job = {
            "day": today,
            "amplitude_ids": [
                {
                    "amplitude_id": self.known_users[u],
                    "requester": asked.get("requester"),
                    "requested_on_day": today,
                }
                for u in valid
            ],
            "status": "staging",
        }
        return json_response(200, [job] if valid else [])


def _problem(asked: Any) -> str | None:
    if not isinstance(asked, dict):
        return "the request body must be a JSON object"
    user_ids = asked.get("user_ids", [])
    amplitude_ids = asked.get("amplitude_ids", [])
    if not isinstance(user_ids, list) or not all(isinstance(u, str) for u in user_ids):
        return "user_ids must be an array of strings"
    if not isinstance(amplitude_ids, list) or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in amplitude_ids
    ):
        return "amplitude_ids must be an array of integers"
    if not user_ids and not amplitude_ids:
        return "one of amplitude_ids or user_ids is required"
    if len(user_ids) + len(amplitude_ids) > MAX_IDS:
        return f"at most {MAX_IDS} amplitude_ids and user_ids may be deleted in one request"
    if "requester" in asked and not isinstance(asked["requester"], str):
        return "requester must be a string"
    for flag in ("ignore_invalid_id", "delete_from_org"):
        if flag in asked and asked[flag] not in FLAG_VALUES:
            return f'{flag} must be the string "True" or "False"'
    return None
