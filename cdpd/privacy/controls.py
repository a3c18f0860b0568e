"""Controls by class: what happens to the fields of the inventory's classes on their way in
(per source: block) and out (per destination and warehouse: block, hash or allow).

Only fields in the inventory (classified by a person) are controlled, as in Segment. A control
is compiled to the list of field paths it acts on, so a message costs nothing more when the
inventory holds no field of a controlled class, and otherwise one walk per controlled path.
Hashing is SHA-256 of the salt and the value (a string as it is, anything else as its JSON
text), in hex; null stays null.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from cdpd.governance.chain import Findings, Message, Verdict
from cdpd.privacy.inbox import SECTIONS

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def field_problem(field: str) -> str | None:
    """Why `field` cannot be classified, or None: a dotted path under a section."""
    section, _, rest = field.partition(".")
    if section not in SECTIONS or not rest or not all(rest.split(".")):
        return (
            f"{field!r} is not a field path: expected properties.NAME, traits.NAME or "
            "context.NAME (dotted for nested fields)"
        )
    return None


class Inventory:
    """The classified fields in force (field -> class), shared by ingest and delivery. It is
    replaced whole when it changes and carries a version, so users recompile only then."""

    def __init__(self, classes: Mapping[str, str] | None = None) -> None:
        self.classes: dict[str, str] = dict(classes or {})
        self.version = 0

    def replace(self, classes: Mapping[str, str]) -> bool:
        if classes == self.classes:
            return False
        self.classes = dict(classes)
        self.version += 1
        return True

    def classify(self, field: str, class_: str | None) -> None:
        classes = dict(self.classes)
        if class_ is None:
            classes.pop(field, None)
        else:
            classes[field] = class_
        self.replace(classes)


def hash_value(value: Any, salt: str) -> Any:
    if value is None:
        return None
    text = value if type(value) is str else _encode(value).decode()
    return hashlib.sha256((salt + text).encode()).hexdigest()


class PathControls(msgspec.Struct, frozen=True, gc=False):
    """The paths to act on, parents before children, and the salt. A plain Struct, so a
    warehouse sync's worker process can receive it."""

    rules: tuple[tuple[tuple[str, ...], str], ...] = ()
    salt: str = ""

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, body: dict[str, Any]) -> bool:
        """Block or hash the controlled fields of `body` in place; True when any was there."""
        changed = False
        for parts, action in self.rules:
            parent: Any = body
            for part in parts[:-1]:
                parent = parent.get(part)
                if type(parent) is not dict:
                    break
            else:
                last = parts[-1]
                if last in parent:
                    if action == "block":
                        del parent[last]
                    else:
                        parent[last] = hash_value(parent[last], self.salt)
                    changed = True
        return changed


def compile_controls(
    classes: Mapping[str, str], actions: Mapping[str, str], salt: str = ""
) -> PathControls:
    """The controls for `actions` (class -> block/hash/allow) over the inventory `classes`."""
    rules = sorted(
        (tuple(field.split(".")), actions[class_])
        for field, class_ in classes.items()
        if actions.get(class_, "allow") != "allow"
    )
    return PathControls(tuple(rules), salt)


class LiveControls:
    """Controls that follow the live inventory: recompiled when its version changes."""

    def __init__(self, inventory: Inventory, actions: Mapping[str, str], salt: str = "") -> None:
        self._inventory = inventory
        self._actions = dict(actions)
        self._salt = salt
        self._version = -1
        self._controls = PathControls()

    def current(self) -> PathControls:
        inventory = self._inventory
        if inventory.version != self._version:
            self._controls = compile_controls(inventory.classes, self._actions, self._salt)
            self._version = inventory.version
        return self._controls

    def payload(self, source: str, payload: str) -> str:
        """A destination's copy of a stored payload (the text itself when nothing applies)."""
        controls = self.current()
        if not controls:
            return payload
        body = _decode(payload)
        if type(body) is not dict or not controls.apply(body):
            return payload
        return _encode(body).decode()


class BlockedFields:
    """The chain's processor for a source's standard control: removes the inventory's fields
    of the blocked classes; the message flows on without them."""

    def __init__(
        self, inventory: Inventory, classes: Sequence[str], counts: dict[str, int], source: str
    ) -> None:
        self._controls = LiveControls(inventory, dict.fromkeys(classes, "block"))
        self._counts = counts  # messages that lost fields, per source (for /metrics)
        self._source = source

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        controls = self._controls.current()
        if controls and controls.apply(message.body):
            message.changed()
            self._counts[self._source] = self._counts.get(self._source, 0) + 1
        return None
