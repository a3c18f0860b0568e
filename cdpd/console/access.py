"""Who may see and do what: roles per workspace, password hashing, API tokens, and the
sign-in rate limit.

A role is one of `read-only` (see), `member` (see and operate: replay, retry, sync now) and
`owner` (everything, settings included). A principal (a person signed in, or an API token)
holds roles per workspace; what it may touch is what those workspaces list in the config.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import argon2

from cdpd.config import Config, Workspace

ROLES = ("read-only", "member", "owner")
TOKEN_PREFIX = "cdpd_"  # noqa: S105 (marks a token in logs and diffs; not a secret)
_hasher = argon2.PasswordHasher()


def rank(role: str) -> int:
    return ROLES.index(role)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when the password matches (argon2id; run it off the event loop: it is slow on
    purpose)."""
    try:
        return _hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


@functools.cache
def dummy_hash() -> str:
    """A hash to verify against when the name is unknown, so that an unknown name takes as
    long to refuse as a wrong password."""
    return _hasher.hash(secrets.token_hex(16))


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """A person or a token, with its role in each workspace it belongs to."""

    name: str
    roles: dict[str, str]
    kind: str = "person"  # or "token"
    csrf_token: str = ""

    def role(self, workspace: str) -> str | None:
        return self.roles.get(workspace)

    def may(self, workspace: str, needed: str) -> bool:
        role = self.roles.get(workspace)
        return role is not None and rank(role) >= rank(needed)


@dataclass(frozen=True)
class Scope:
    """The names a set of workspaces lists: what a principal may see."""

    sources: frozenset[str]
    destinations: frozenset[str]
    warehouses: frozenset[str]

    @staticmethod
    def of(config: Config, workspaces: list[str]) -> Scope:
        chosen = [w for w in config.workspaces if w.name in workspaces]
        return Scope(
            frozenset(s for w in chosen for s in w.sources),
            frozenset(d for w in chosen for d in w.destinations),
            frozenset(h for w in chosen for h in w.warehouses),
        )


def workspace_of(config: Config, section: str, name: str) -> Workspace | None:
    """The workspace that lists `name` under `section` (sources, destinations, warehouses)."""
    for workspace in config.workspaces:
        if name in getattr(workspace, section):
            return workspace
    return None


@dataclass
class SigninLimit:
    """At most `max_failures` failed sign-ins per key (a name, an address) in `window_s`."""

    max_failures: int
    window_s: float
    clock_s: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def blocked(self, *keys: str) -> bool:
        now = self.clock_s()
        return any(len(self._recent(key, now)) >= self.max_failures for key in keys)

    def failed(self, *keys: str) -> None:
        now = self.clock_s()
        for key in keys:
            self._recent(key, now).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times and len(self._failures) > 10_000:  # forget keys nobody retries
            self._failures = {k: v for k, v in self._failures.items() if v}
            self._failures[key] = times
        return times
