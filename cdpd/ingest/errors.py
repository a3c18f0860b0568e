"""Errors a request can end with; each carries its HTTP status and a reason code."""

from __future__ import annotations

from typing import TypeVar

import msgspec

T = TypeVar("T")


class ApiError(Exception):
    """Answered as `{"code": ..., "message": ...}`: analytics-python needs both keys."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        # Close the connection after the answer (what is left of the request cannot be read).
        self.close = close


def decoded_request(body: bytes, kind: type[T], what: str) -> T:
    """`body` as a JSON `kind`; 400 `invalid_request` naming `what` and where the body is off."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.MsgspecError as exc:
        raise ApiError(400, "invalid_request", f"not a {what} request: {exc}") from None
