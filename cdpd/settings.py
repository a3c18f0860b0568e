"""What every config section is built from: the error a bad config raises, the Struct base and
the constrained types sections share."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
MessageType = Literal["identify", "track", "page", "screen", "group", "alias"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says which key and why."""


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass
