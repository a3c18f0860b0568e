"""Reading a request body with a hard limit on its uncompressed size.

aiohttp inflates `Content-Encoding: gzip`/`deflate` bodies chunk by chunk as they are read, so
stopping at the limit means a compressed bomb is never inflated past it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

from cdpd.ingest.errors import ApiError


async def read_limited(request: web.Request, limit_bytes: int, timeout_s: float) -> bytes:
    """The body, read within `timeout_s` (a client trickling it in is answered 408 and its
    connection closed once answered)."""
    if request.content.is_eof():  # all of it is here already: no timer to set and cancel
        return await _read(request, limit_bytes)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(request, limit_bytes)
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout_s:g} s (server.body_timeout_s)",
            close=True,  # the rest of the body is not read, so nothing can follow it
        ) from None


async def _read(request: web.Request, limit_bytes: int) -> bytes:
    declared = request.content_length
    plain = "Content-Encoding" not in request.headers
    if plain and declared is not None:
        if declared > limit_bytes:
            raise _too_large(limit_bytes)
        try:
            return await request.content.readexactly(declared)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            raise _disconnected() from None
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit_bytes:
                raise _too_large(limit_bytes)
            chunks.append(chunk)
    except ConnectionResetError:
        raise _disconnected() from None
    except (PayloadEncodingError, web.RequestPayloadError) as exc:
        encoding = request.headers.get("Content-Encoding", "none")
        detail = str(exc).replace("\n", " ").strip()
        raise ApiError(
            400,
            "invalid_body_encoding",
            f"the body could not be read (Content-Encoding: {encoding}): {detail}",
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _disconnected() -> ApiError:
    return ApiError(
        400, "client_disconnected", "the client closed the connection before sending the body"
    )


def _too_large(limit_bytes: int) -> ApiError:
    return ApiError(
        400,
        "request_too_large",
        f"the request body is over {limit_bytes} bytes uncompressed; split it into smaller batches",
    )
