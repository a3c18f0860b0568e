"""What Engage takes from the identity stage, in order: a message resolved to a profile, two
profiles merged into one, a profile deleted. Typed so the identity stage and Engage agree on
one seam; `EngageStore.process` consumes them."""

from __future__ import annotations

from typing import Any

import msgspec


class ProfileMessage(msgspec.Struct, frozen=True, tag="message"):
    profile_id: str
    message: dict[str, Any]
    source: str = ""


class ProfilesMerged(msgspec.Struct, frozen=True, tag="merged"):
    from_profile: str
    into_profile: str


class ProfileDeleted(msgspec.Struct, frozen=True, tag="deleted"):
    profile_id: str


Input = ProfileMessage | ProfilesMerged | ProfileDeleted
