"""What every config section is built from: the error a bad config raises, the Struct base and
the constrained types sections share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
MessageType = Literal["identify", "track", "page", "screen", "group", "alias"]
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
# What NAME_PATTERN means, for error messages and the README.
NAME_RULE = (
    "a name is 1 to 100 characters, each a letter (a-z, A-Z), a digit, '_', '.' or '-'; "
    'no spaces (write "big-orders", not "big orders")'
)
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NAME_PATTERN)]


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says which key and why."""


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


def env_secret(name: str) -> str | None:
    """The secret an `*_env` key names: the environment variable (systemd's `Environment=` or
    `EnvironmentFile=`), else the systemd credential of that name (`LoadCredential=NAME:...`,
    read from `$CREDENTIALS_DIRECTORY`, with a trailing newline dropped); None when neither."""
    value = os.environ.get(name)
    if value:
        return value
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder or "/" in name or name in (".", ".."):
        return None
    try:
        text = (Path(folder) / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text.removesuffix("\n").removesuffix("\r") or None
