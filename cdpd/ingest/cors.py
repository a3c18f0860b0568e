"""CORS for browsers: analytics.js 1.84+ sends Authorization and X-Retry-Count, so every POST is
preceded by a preflight; the origin is echoed because users may send credentials."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, X-Retry-Count"


def response_headers(origin: str | None) -> dict[str, str]:
    if not origin:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def preflight_headers(request_headers: Mapping[str, str], max_age_s: int) -> dict[str, str]:
    asked = request_headers.get("Access-Control-Request-Headers", "")
    headers = response_headers(request_headers.get("Origin")) or {
        "Access-Control-Allow-Origin": "*"
    }
    headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    headers["Access-Control-Allow-Headers"] = _merge_header_lists(DEFAULT_ALLOWED_HEADERS, asked)
    headers["Access-Control-Max-Age"] = str(max_age_s)
    return headers


def _merge_header_lists(base: str, extra: str) -> str:
    names = [name.strip() for name in f"{base},{extra}".split(",") if name.strip()]
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.lower(), name)
    return ", ".join(seen.values())
