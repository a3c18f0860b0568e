"""Actions: what a destination does with a message, as Segment's Destination Actions do.

A destination type offers action kinds (Mixpanel: track an event, identify a user...), each
with fields that have default mappings, and presets: the actions a destination gets when its
config names none. A configured action picks a kind, subscribes with FQL and may remap fields.

At delivery time `prepare` decodes each claimed message once, finds the actions whose
subscription matches and evaluates their mappings (a message that cannot be decoded is that
delivery's problem alone: it is dead, the others go on); the destination sends the prepared items
and returns one Result each, and `combine` turns those into one result per delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from cdpd.destinations.base import Result
from cdpd.destinations.settings import ActionConfig
from cdpd.destinations.settings import Destination as DestinationConfig
from cdpd.mapping import fql, kit
from cdpd.model import statuses
from cdpd.model.rows import MessageView
from cdpd.settings import ConfigError

WHOLE_MESSAGE: dict[str, Any] = {"@path": "$."}
EVERY_TYPE = " or ".join(
    f'type = "{kind}"' for kind in ("identify", "track", "page", "screen", "group", "alias")
)
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class Field(msgspec.Struct, frozen=True):
    description: str
    default: Any = None  # a mapping; None: no default
    required: bool = False


class ActionKind(msgspec.Struct, frozen=True):
    name: str
    description: str
    fields: dict[str, Field]


class Preset(msgspec.Struct, frozen=True):
    name: str
    kind: str
    subscribe: str
    mapping: dict[str, Any] = {}  # over the kind's defaults (Segment's "Viewed {{name}}", say)


class Action(msgspec.Struct, frozen=True):
    """A configured (or preset) action, parsed and checked."""

    name: str
    kind: str
    subscribe: str
    subscription: fql.Node
    mapping: dict[str, Any]
    required: tuple[str, ...]
    whole_message: bool  # every field maps the whole message: send the stored JSON as it is
    whole_fields: frozenset[str] = frozenset()  # the fields that map the whole message


class Prepared(msgspec.Struct, frozen=True, gc=False):
    """One action's part of one delivery: the fields to send, or why they cannot be sent."""

    delivery: MessageView
    action: str
    kind: str
    fields: dict[str, Any]
    message: dict[str, Any] | None  # the decoded message (None when whole_message skipped it)
    problem: str | None = None  # a required field has no value: never sent, never retried
    whole_fields: frozenset[str] = frozenset()  # the action's fields that map the whole message


def build(
    config: DestinationConfig, kinds: dict[str, ActionKind], presets: Sequence[Preset]
) -> list[Action]:
    """The destination's actions (its presets when it configures none); ConfigError names the
    action and key at fault."""
    where = f"destination {config.name!r}"
    if config.actions is None:
        chosen = [
            ActionConfig(name=p.name, kind=p.kind, subscribe=p.subscribe, mapping=p.mapping)
            for p in presets
        ]
    else:
        chosen = [action for action in config.actions if action.enabled]
    problems: list[str] = []
    actions = []
    for index, action in enumerate(chosen):
        place = f"{where}, actions[{index}] ({action.name})"
        built = _build_one(action, kinds, place, problems)
        if built is not None:
            actions.append(built)
    if problems:
        raise ConfigError("; ".join(problems))
    return actions


def subscription_sql(actions: Sequence[Action]) -> tuple[str, list[Any]]:
    """A SQL condition true for messages at least one action subscribes to."""
    if not actions:
        return "0", []
    parts = [fql.to_sql(action.subscription) for action in actions]
    return "(" + " OR ".join(sql for sql, _ in parts) + ")", [p for _, ps in parts for p in ps]


def prepare(actions: Sequence[Action], batch: Sequence[MessageView]) -> list[Prepared]:
    """What each delivery's matching actions send (decoding each message once)."""
    prepared: list[Prepared] = []
    for item in batch:
        if len(actions) == 1 and actions[0].whole_message:
            # Routing already picked the messages this single action subscribes to.
            only = actions[0]
            prepared.append(
                Prepared(item, only.name, only.kind, {}, None, whole_fields=only.whole_fields)
            )
            continue
        try:
            message = _decoder.decode(item.payload)
        except msgspec.DecodeError as exc:  # stored by an older cdpd: `1e400`, say
            if actions:
                prepared.append(_unreadable(actions[0], item, exc))
            continue
        for action in actions:
            if fql.matches(action.subscription, message):
                prepared.append(_prepare_one(action, item, message))
    return prepared


def mapped_json(item: Prepared, field: str) -> bytes:
    """A field's value as JSON: for a field that maps the whole message, the stored message
    byte for byte (never decoded and encoded again)."""
    if field in item.whole_fields:
        return item.delivery.payload.encode()
    return _encoder.encode(item.fields.get(field))


def combine(
    batch: Sequence[MessageView], prepared: Sequence[Prepared], results: Sequence[Result]
) -> list[Result]:
    """One result per delivery: a retryable failure of any of its actions retries the whole
    delivery; otherwise a permanent failure makes it dead; otherwise it is delivered."""
    if len(prepared) == len(batch) and all(
        item.delivery is delivery for item, delivery in zip(prepared, batch, strict=True)
    ):  # one action per delivery (a whole-message webhook, say): its result is the result
        return list(results)
    by_delivery: dict[int, list[Result]] = {}
    for item, result in zip(prepared, results, strict=True):
        by_delivery.setdefault(item.delivery.id, []).append(result)
    return [worst(by_delivery.get(item.id, [])) for item in batch]


def worst(results: Sequence[Result]) -> Result:
    """One result from several for one delivery (its actions, or the requests one action
    needed): a retryable failure first (it is tried again), else a permanent one, else success."""
    if not results:
        return Result(None, "skipped: none of its actions subscribes to it", skipped=True)
    failures = [r for r in results if not statuses.is_success(r.status) or r.invalid]
    retryable = [r for r in failures if not r.invalid and statuses.is_retryable(r.status)]
    return (retryable or failures or results)[0]


def _unreadable(action: Action, item: MessageView, exc: msgspec.DecodeError) -> Prepared:
    """A stored message that cannot be decoded: that delivery alone is dead, with the reason."""
    problem = f"the stored message cannot be decoded: {exc}"
    return Prepared(item, action.name, action.kind, {}, None, problem, action.whole_fields)


def _prepare_one(action: Action, item: MessageView, message: dict[str, Any]) -> Prepared:
    try:
        fields = kit.to_fields(kit.evaluate(action.mapping, message))
    except kit.MappingError as exc:  # Segment fails such an event too; retrying cannot help
        failed = f"{action.name}: mapping failed: {exc}"
        return Prepared(item, action.name, action.kind, {}, message, failed, action.whole_fields)
    missing = [name for name in action.required if name not in fields]
    problem = (
        f"{action.name}: no value for required field {', '.join(missing)}" if missing else None
    )
    return Prepared(item, action.name, action.kind, fields, message, problem, action.whole_fields)


def _build_one(
    action: ActionConfig, kinds: dict[str, ActionKind], place: str, problems: list[str]
) -> Action | None:
    kind_name = action.kind or (next(iter(kinds)) if len(kinds) == 1 else None)
    if kind_name not in kinds:
        known = ", ".join(kinds)
        problems.append(f"{place}.kind: expected one of {known}, got {action.kind!r}")
        return None
    kind = kinds[kind_name]
    try:
        subscription = fql.parse(action.subscribe)
    except fql.FqlError as exc:
        problems.append(f"{place}.subscribe: {exc}")
        return None
    unknown = [
        key for key in action.mapping if key not in kind.fields and key != kit.ROOT_DIRECTIVE_KEY
    ]
    for key in unknown:
        fields = ", ".join(kind.fields)
        problems.append(f"{place}.mapping.{key}: {kind_name} has no field {key} (fields: {fields})")
    mapping = {name: f.default for name, f in kind.fields.items() if f.default is not None}
    mapping.update(action.mapping)
    try:
        mapping = kit.root_form(mapping)
        problems += kit.validate(kit.root_form(action.mapping), f"{place}.mapping")
    except kit.MappingError as exc:
        problems.append(f"{place}.mapping: {exc}")
    return Action(
        name=action.name,
        kind=kind_name,
        subscribe=action.subscribe,
        subscription=subscription,
        mapping=mapping,
        required=tuple(name for name, f in kind.fields.items() if f.required),
        whole_message=bool(mapping) and all(value == WHOLE_MESSAGE for value in mapping.values()),
        whole_fields=frozenset(name for name, value in mapping.items() if value == WHOLE_MESSAGE),
    )
