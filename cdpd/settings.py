"""What every config section is built from: the error a bad config raises, the Struct base and
the constrained types sections share."""

from __future__ import annotations

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
