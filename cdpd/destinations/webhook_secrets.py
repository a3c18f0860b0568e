"""What a webhook's config holds that must never be quoted back: credential headers, the
password of a URL, credential-like query values. Errors (`last_error`, attempts, logs, the admin
API) are scrubbed of these, as every API destination's are of its keys."""

from __future__ import annotations

import base64
import binascii
import re

from yarl import URL

from cdpd.settings import ConfigError

# A header or query parameter whose name says it carries a credential.
_CREDENTIAL_NAME = re.compile(
    r"auth|token|key|secret|password|passwd|pwd|sig|session|cookie|credential", re.IGNORECASE
)
# Parts of a credential shorter than this are words ("Basic"), not secrets.
_MIN_SECRET_CHARS = 4


def webhook_secrets(name: str, url: str, headers: dict[str, str]) -> tuple[str, ...]:
    """Every value to scrub from the webhook's error texts; raises ConfigError for a URL with
    credentials as well as an Authorization header (the request could never be sent)."""
    parsed = URL(url)
    has_authorization = any(h.lower() == "authorization" for h in headers)
    if (parsed.user or parsed.password) and has_authorization:
        raise ConfigError(
            f"destination {name!r}: url has credentials (user:password@) and headers has an "
            "Authorization header; give one of them"
        )
    found: list[str] = []
    if parsed.password:
        found.append(parsed.password)
    if parsed.user is not None and parsed.password:
        pair = f"{parsed.user}:{parsed.password}"
        # aiohttp sends URL credentials as Basic auth: the encoded pair is a secret too.
        found += [pair, base64.b64encode(pair.encode("latin-1", "replace")).decode()]
    for key, value in parsed.query.items():
        if _CREDENTIAL_NAME.search(key):
            found.append(value)
    for header, value in headers.items():
        if _CREDENTIAL_NAME.search(header):
            found += _credential_forms(value)
    return tuple(dict.fromkeys(v for v in found if len(v) >= _MIN_SECRET_CHARS))


def _credential_forms(value: str) -> list[str]:
    """A header value, its token (after a scheme such as `Bearer`), and for Basic the decoded
    `user:password` and the password alone."""
    forms = [value]
    scheme, _, token = value.strip().partition(" ")
    if token:
        forms.append(token.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(token.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return forms
            forms += [decoded, decoded.partition(":")[2]]
    return forms
