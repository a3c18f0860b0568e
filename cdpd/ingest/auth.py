"""Write keys: which source a request comes from.

Segment accepts the key as HTTP Basic (the key is the user name; the colon may be missing), as the
batch envelope's `writeKey`, or as the message's own `writeKey`. Basic wins when both are given.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from cdpd.config import Source
from cdpd.ingest.errors import ApiError

MAX_REMEMBERED_HEADERS = 1024


class WriteKeys:
    def __init__(self, sources: list[Source]) -> None:
        self._by_key = {source.write_key: source for source in sources}
        # Clients send the same Authorization header on every request: remember its key, and
        # the enabled source it names. (A malformed header raises before it is remembered.)
        self._key_by_header: dict[str, str | None] = {}
        self._source_by_header: dict[str, Source] = {}

    def source_for(
        self,
        authorization: str | None,
        body_key: object,
        item_key: Callable[[], object] | None = None,
    ) -> Source:
        """The source a request belongs to, or a 401/403 ApiError that says why not. The key
        is the Basic user name, else `body_key`, else what `item_key()` finds (called only
        then, as it may have to decode a message)."""
        if authorization:
            source = self._source_by_header.get(authorization)
            if source is not None:
                return source
        key = self._key_from_header(authorization) if authorization else None
        if key is None:
            key = body_key if isinstance(body_key, str) and body_key else None
        if key is None and item_key is not None:
            found = item_key()
            key = found if isinstance(found, str) and found else None
        if key is None:
            raise ApiError(
                401,
                "missing_write_key",
                "no write key: send it as HTTP Basic auth (the key as the user name) "
                "or as writeKey in the body",
            )
        source = self._by_key.get(key)
        if source is None:
            raise ApiError(401, "invalid_write_key", "the write key is not known to this cdpd")
        if not source.enabled:
            raise ApiError(403, "source_disabled", f"the source {source.name!r} is disabled")
        if authorization and self._key_by_header.get(authorization) == key:
            if len(self._source_by_header) >= MAX_REMEMBERED_HEADERS:
                self._source_by_header.clear()
            self._source_by_header[authorization] = source
        return source

    def _key_from_header(self, authorization: str) -> str | None:
        try:
            return self._key_by_header[authorization]
        except KeyError:
            pass
        key = key_from_basic(authorization)
        if len(self._key_by_header) >= MAX_REMEMBERED_HEADERS:
            self._key_by_header.clear()
        self._key_by_header[authorization] = key
        return key

    def enabled_source(self, key: str) -> Source | None:
        source = self._by_key.get(key)
        return source if source is not None and source.enabled else None


def key_from_basic(authorization: str) -> str | None:
    """The user name of a Basic credential; None for other schemes (e.g. an OAuth Bearer token,
    which Segment pairs with a writeKey in the body)."""
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # not base64 (or not ASCII), or not UTF-8 inside
        raise ApiError(
            401, "invalid_authorization", "the Basic credential is not valid base64 UTF-8"
        ) from None
    key = decoded.partition(":")[0]
    return key or None
