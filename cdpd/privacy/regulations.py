"""Regulations as Segment's Public API names them: the types, what each one does, the request
body, the targets a deletion has to reach and how their statuses add up to the overall one.

Pure: the tables are in `regulations_store`, the HTTP side in `regulations_api`, the work in
`regulations_service`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

import msgspec

from cdpd.config import Config
from cdpd.destinations.settings import (
    AmplitudeDestination,
    CustomerIoDestination,
    Destination,
    FileDestination,
    MixpanelDestination,
    WebhookDestination,
)

RegulationType = Literal[
    "SUPPRESS_ONLY",
    "UNSUPPRESS",
    "SUPPRESS_WITH_DELETE_INTERNAL",
    "DELETE_INTERNAL",
    "SUPPRESS_WITH_DELETE",
    "DELETE_ONLY",
    "DELETE_ARCHIVE_ONLY",
]
REGULATION_TYPES: tuple[str, ...] = RegulationType.__args__  # type: ignore[attr-defined]
SubjectType = Literal["USER_ID", "OBJECT_ID"]
MAX_SUBJECT_IDS = 5000
MAX_SUBJECT_ID_CHARS = 1000

# Overall and per-target statuses, Segment's names.
INITIALIZED, RUNNING, FINISHED = "INITIALIZED", "RUNNING", "FINISHED"
PARTIAL_SUCCESS, FAILED, NOT_SUPPORTED, INVALID = (
    "PARTIAL_SUCCESS",
    "FAILED",
    "NOT_SUPPORTED",
    "INVALID",
)
STATUSES = (INITIALIZED, INVALID, NOT_SUPPORTED, RUNNING, PARTIAL_SUCCESS, FAILED, FINISHED)
UNFINISHED = (INITIALIZED, RUNNING)

# Target kinds, in the order a regulation works through them: the outbox first, so that what a
# warehouse sync or a file write reads next no longer holds the user; then the identity store,
# so that a warehouse's Profiles Sync tables are erased after the profile is gone from it.
OUTBOX, IDENTITY = "outbox", "identity"
WAREHOUSE, FILE, DESTINATION = "warehouse", "file", "destination"
FIRST = (OUTBOX, IDENTITY)  # the targets every other one waits for
WORKSPACE = "*"  # the `source` of a suppression that holds for every source

# Destination types whose vendor API can delete a user, and what cdpd calls there.
FORWARDED = (AmplitudeDestination, MixpanelDestination, CustomerIoDestination, WebhookDestination)


class Effect(NamedTuple):
    """What a regulation type does. `suppress`: True starts a suppression, False lifts one."""

    suppress: bool | None
    delete_internal: bool  # the outbox, every warehouse and the local files
    archive_only: bool  # only the outbox (the archive replay reads)
    forward: bool  # ask destinations to delete too


EFFECTS: dict[str, Effect] = {
    "SUPPRESS_ONLY": Effect(True, False, False, False),
    "UNSUPPRESS": Effect(False, False, False, False),
    "SUPPRESS_WITH_DELETE_INTERNAL": Effect(True, True, False, False),
    "DELETE_INTERNAL": Effect(None, True, False, False),
    "SUPPRESS_WITH_DELETE": Effect(True, True, False, True),
    "DELETE_ONLY": Effect(None, True, False, True),
    "DELETE_ARCHIVE_ONLY": Effect(None, False, True, False),
}


SubjectId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SUBJECT_ID_CHARS)]


class RegulationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of `POST /regulations` (and `/regulations/sources/{source}`)."""

    regulationType: RegulationType
    subjectType: SubjectType
    subjectIds: Annotated[list[SubjectId], msgspec.Meta(min_length=1, max_length=MAX_SUBJECT_IDS)]


class Target(NamedTuple):
    name: str  # outbox, warehouse:NAME, file:NAME, destination:NAME
    kind: str
    status: str = INITIALIZED
    note: str | None = None  # why a target is NOT_SUPPORTED


def new_id(now_ms: int) -> str:
    """A regulation id that sorts by creation time (hex milliseconds, then randomness)."""
    return f"{now_ms:012x}{secrets.token_hex(6)}"


def unique_subjects(subject_ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(subject_ids))


def plan_targets(config: Config, regulation_type: str, source: str | None) -> list[Target]:
    """Every store a regulation of this type must reach, given the config in force."""
    effect = EFFECTS[regulation_type]
    if not (effect.delete_internal or effect.archive_only):
        return []
    targets = [Target(OUTBOX, OUTBOX)]
    if effect.archive_only:
        return targets
    if config.identity is not None and source is None:  # a profile spans every source
        targets.append(Target(IDENTITY, IDENTITY))
    targets += [Target(f"{WAREHOUSE}:{w.name}", WAREHOUSE) for w in config.warehouses]
    targets += [
        Target(f"{FILE}:{d.name}", FILE)
        for d in config.destinations
        if isinstance(d, FileDestination) and _receives(d, source)
    ]
    if effect.forward:
        targets += [
            _destination_target(d)
            for d in config.destinations
            if d.enabled and not isinstance(d, FileDestination) and _receives(d, source)
        ]
    return targets


def _destination_target(destination: Destination) -> Target:
    name = f"{DESTINATION}:{destination.name}"
    if not isinstance(destination, FORWARDED):
        return Target(
            name,
            DESTINATION,
            NOT_SUPPORTED,
            f"{destination.__struct_config__.tag} has no user deletion API",
        )
    missing = missing_deletion_settings(destination)
    if missing:
        return Target(name, DESTINATION, NOT_SUPPORTED, missing)
    return Target(name, DESTINATION)


def missing_deletion_settings(destination: Destination) -> str | None:
    """What a destination's config lacks for forwarding deletions, or None."""
    if isinstance(destination, AmplitudeDestination) and not (
        destination.secret_key or destination.secret_key_env
    ):
        return "Amplitude's user deletion API needs secret_key (or secret_key_env)"
    if isinstance(destination, MixpanelDestination):
        if not (destination.project_token or destination.project_token_env):
            return "Mixpanel's GDPR API needs project_token (or project_token_env)"
        if not (
            destination.gdpr_token
            or destination.gdpr_token_env
            or destination.service_account_username
        ):
            return "Mixpanel's GDPR API needs gdpr_token (or gdpr_token_env) or a service account"
    return None


def _receives(destination: Destination, source: str | None) -> bool:
    return source is None or destination.sources is None or source in destination.sources


def overall_status(target_statuses: Sequence[str]) -> str:
    """The regulation's status from its targets'. Any failed target fails the whole (as
    Segment's does, even when the internal deletion succeeded); a destination that could not
    be asked to delete (NOT_SUPPORTED) makes an otherwise finished regulation a partial success."""
    if any(status in UNFINISHED for status in target_statuses):
        return RUNNING
    if FAILED in target_statuses:
        return FAILED
    if NOT_SUPPORTED in target_statuses:
        return PARTIAL_SUCCESS
    return FINISHED
