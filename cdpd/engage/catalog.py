"""The compiled set of computed traits and audiences: each query compiled once, ordered so a
definition is evaluated after the definitions it reads through trait(), with their streams
merged. Evaluating a profile gives every definition's value; `diff` turns two evaluations
into entries, exits and new trait values.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from cdpd.engage.evaluation import Ctx, Plan, Stream
from cdpd.engage.plan import compile_query
from cdpd.engage.state import AccountState, ProfileState
from cdpd.engage.syntax import QueryError

Kind = Literal["audience", "computed_trait"]
# Identifiers that make a profile known (Segment's "Include Anonymous Users" off).
KNOWN_IDENTIFIERS = ("user_id", "email", "android.idfa", "ios.idfa")
HOUR_MS = 3_600_000
MAX_REMEMBERED = 4096  # kinds of change whose affected definitions are kept


class DefinitionError(ValueError):
    """A definition that cannot be compiled; `key` says which, `error` where in its query."""

    def __init__(self, key: str, message: str, error: QueryError | None = None) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.error = error


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """What a definition says, as configured."""

    key: str
    kind: Kind
    query: str
    include_anonymous: bool = False
    since_ms: int | None = None  # not historical: count only events from this time on


class Definition(msgspec.Struct, frozen=True):
    source: Source
    plan: Plan

    @property
    def key(self) -> str:
        return self.source.key


class Change(msgspec.Struct, frozen=True):
    key: str
    kind: Kind
    # "joined": a user linked to an account that is already in an account audience; the
    # user is sent the membership (the account's own entry was sent before).
    change: Literal["entered", "exited", "computed", "joined"]
    value: Any
    previous: Any = None


class Step(msgspec.Struct, frozen=True):
    """One user-level definition as evaluation needs it, with what its value depends on."""

    key: str
    evaluate: Any
    audience: bool
    include_anonymous: bool
    events: frozenset[str]  # events its streams keep (funnel steps included)
    reads_traits: bool  # reads a profile trait that is not another definition
    reads: frozenset[str]  # other definitions it reads


class Touched(msgspec.Struct):
    """What a batch of messages changed on a profile: only definitions that depend on it
    need evaluating again (time-driven changes are found by rechecks)."""

    events: set[str] = msgspec.field(default_factory=set)
    traits: bool = False
    identifiers: bool = False


class Catalog(msgspec.Struct, frozen=True):
    definitions: tuple[Definition, ...]  # in evaluation order
    streams: dict[str, Stream]
    by_event: dict[str, tuple[Stream, ...]]
    user_steps: tuple[Step, ...] = ()  # the user-level definitions, in evaluation order
    windows: dict[str, tuple[tuple[int, int | None], ...]] = {}  # (lo, hi) hours per stream
    time_relative: bool = False  # some plan compares dates with now
    kinds: tuple[tuple[str, Kind], ...] = ()  # (key, kind) in evaluation order
    user_keys: frozenset[str] = frozenset()  # the keys of `user_steps`
    # `_steps_for`'s answers by (events, traits touched); filled as profiles are evaluated
    affected: dict[tuple[frozenset[str], bool], tuple[tuple[Step, bool], ...]] = {}

    @property
    def user_definitions(self) -> tuple[Definition, ...]:
        return tuple(d for d in self.definitions if not d.plan.account)

    @property
    def account_definitions(self) -> tuple[Definition, ...]:
        return tuple(d for d in self.definitions if d.plan.account)

    def get(self, key: str) -> Definition | None:
        return next((d for d in self.definitions if d.key == key), None)


def compile_definition(source: Source) -> Definition:
    try:
        plan = compile_query(source.query, since_ms=source.since_ms)
    except QueryError as exc:
        raise DefinitionError(source.key, exc.render(source.query), exc) from exc
    if source.kind == "audience" and plan.result != "boolean":
        raise DefinitionError(
            source.key, "an audience query must end in a condition, such as count() >= 1"
        )
    if source.kind == "computed_trait" and plan.result == "boolean":
        raise DefinitionError(
            source.key, "a computed trait's query must end in a value, such as count()"
        )
    if source.kind == "computed_trait" and plan.account:
        raise DefinitionError(source.key, "ANY and ALL are for account audiences")
    return Definition(source, plan)


def build(sources: list[Source]) -> Catalog:
    """Compile every definition; raises DefinitionError for the first that is wrong."""
    definitions = {s.key: compile_definition(s) for s in sources}
    if len(definitions) != len(sources):
        seen: set[str] = set()
        for s in sources:
            if s.key in seen:
                raise DefinitionError(s.key, "the key is used twice")
            seen.add(s.key)
    ordered = _dependency_order(definitions)
    streams: dict[str, Stream] = {}
    for definition in ordered:
        for stream in definition.plan.streams:
            known = streams.get(stream.spec.id)
            if known is not None:
                horizons = (known.horizon_hours, stream.horizon_hours)
                wider = None if None in horizons else max(h or 0 for h in horizons)
                stream = msgspec.structs.replace(known, horizon_hours=wider)
            streams[stream.spec.id] = stream
    by_event: dict[str, list[Stream]] = {}
    for stream in streams.values():
        by_event.setdefault(stream.spec.event, []).append(stream)
    return Catalog(
        user_steps=tuple(_step(d, set(definitions)) for d in ordered if not d.plan.account),
        user_keys=frozenset(d.key for d in ordered if not d.plan.account),
        affected={},
        windows=_windows(ordered),
        time_relative=any(d.plan.time_relative for d in ordered),
        kinds=tuple((d.key, d.source.kind) for d in ordered),
        definitions=tuple(ordered),
        streams=streams,
        by_event={event: tuple(items) for event, items in by_event.items()},
    )


def _windows(definitions: list[Definition]) -> dict[str, tuple[tuple[int, int | None], ...]]:
    windows: dict[str, set[tuple[int, int | None]]] = {}
    for definition in definitions:
        for stream_id, lo, hi in definition.plan.windows:
            windows.setdefault(stream_id, set()).add((lo, hi))
    return {stream_id: tuple(sorted(w, key=str)) for stream_id, w in windows.items()}


def _step(definition: Definition, keys: set[str]) -> Step:
    plan = definition.plan
    return Step(
        key=definition.key,
        evaluate=plan.evaluate,
        audience=definition.source.kind == "audience",
        include_anonymous=definition.source.include_anonymous,
        events=frozenset(stream.spec.event for stream in plan.streams),
        reads_traits=bool(plan.trait_refs - keys),
        reads=frozenset(plan.trait_refs & keys),
    )


def _dependency_order(definitions: dict[str, Definition]) -> list[Definition]:
    ordered: list[Definition] = []
    state: dict[str, str] = {}

    def visit(key: str, path: list[str]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            cycle = " -> ".join([*path[path.index(key) :], key])
            raise DefinitionError(key, f"definitions read each other in a cycle: {cycle}")
        state[key] = "visiting"
        for ref in sorted(definitions[key].plan.trait_refs):
            if ref in definitions and ref != key:
                visit(ref, [*path, key])
            elif ref == key:
                raise DefinitionError(key, "a definition cannot read its own trait()")
        state[key] = "done"
        ordered.append(definitions[key])

    for key in definitions:
        visit(key, [])
    return ordered


def is_known(state: ProfileState) -> bool:
    return any(state.identifiers.get(kind) for kind in KNOWN_IDENTIFIERS)


def evaluate(
    catalog: Catalog, state: ProfileState, now_ms: int, touched: Touched | None = None
) -> dict[str, Any]:
    """Every user-level definition's value for a profile at `now_ms`: a boolean membership
    per audience, a value (or None) per computed trait; false or None for an anonymous
    profile unless the definition includes anonymous profiles. With `touched`, a definition
    whose inputs did not change keeps its last value (`state.values`) instead of being
    evaluated again."""
    return evaluate_changes(catalog, state, now_ms, touched)[0]


def evaluate_changes(
    catalog: Catalog, state: ProfileState, now_ms: int, touched: Touched | None = None
) -> tuple[dict[str, Any], set[str]]:
    """`evaluate`, and the keys whose value differs from `state.values` (what `diff` needs
    to look at)."""
    previous = state.values
    if touched is not None and not touched.identifiers and previous.keys() == catalog.user_keys:
        # Only the definitions reading what changed, and those reading them, may change.
        values = dict(previous)
        steps = _steps_for(catalog, touched)
    else:  # new definitions, or who counts as known may have changed: every one
        values = {}
        steps = tuple((step, True) for step in catalog.user_steps)
    ctx = Ctx(state, now_ms, values)
    changed: set[str] = set()
    known = None
    for step, direct in steps:
        if not direct and not (step.reads & changed):
            continue
        value = step.evaluate(ctx)
        if not step.include_anonymous and value is not None and value is not False:
            known = is_known(state) if known is None else known
            if not known:
                value = False if step.audience else None
        if step.audience:
            value = bool(value)
        key = step.key
        values[key] = value
        if previous.get(key) != value:
            changed.add(key)
    return values, changed


def _steps_for(catalog: Catalog, touched: Touched) -> tuple[tuple[Step, bool], ...]:
    """The steps a change may affect, in evaluation order, each with whether it reads the
    change itself (True) or only other definitions (evaluated when one of those changed).
    Remembered per kind of change: a batch has few distinct ones."""
    events = frozenset(touched.events)
    remembered = catalog.affected.get((events, touched.traits))
    if remembered is not None:
        return remembered
    affected = []
    for step in catalog.user_steps:
        direct = bool(step.events & events) or (step.reads_traits and touched.traits)
        if direct or step.reads:
            affected.append((step, direct))
    found = tuple(affected)
    if len(catalog.affected) < MAX_REMEMBERED:
        catalog.affected[(events, touched.traits)] = found
    return found


def evaluate_account(
    catalog: Catalog, account: AccountState, members: list[ProfileState], now_ms: int
) -> dict[str, bool]:
    """Account audiences for one account: ANY/ALL look at its users (with their values)."""
    member_ctxs = [Ctx(member, now_ms, dict(member.values)) for member in members]
    ctx = Ctx(account, now_ms, {}, members=member_ctxs)
    values: dict[str, bool] = {}
    for definition in catalog.account_definitions:
        values[definition.key] = bool(definition.plan.evaluate(ctx))
        ctx.values[definition.key] = values[definition.key]
    return values


def diff(
    catalog: Catalog,
    before: dict[str, Any],
    after: dict[str, Any],
    keys: set[str] | None = None,
) -> list[Change]:
    """What changed between two evaluations: audience entries and exits, and computed trait
    values that are new or different. A trait evaluated for the first time with an empty
    value (absent, 0 or an empty list: a profile without such events) is no change, so new
    profiles do not each send a zero. `keys`: only these can have changed (from
    `evaluate_changes`)."""
    changes = []
    kinds = catalog.kinds
    if keys is not None:
        kinds = tuple(item for item in kinds if item[0] in keys) if keys else ()
    for key, kind in kinds:
        new = after.get(key, _ABSENT)
        if new is _ABSENT:
            continue
        old = before.get(key)
        if kind == "audience":
            if bool(new) != bool(old):
                changes.append(
                    Change(key, "audience", "entered" if new else "exited", bool(new), bool(old))
                )
        elif (new != old) if key in before else not _empty(new):
            changes.append(Change(key, "computed_trait", "computed", new, old))
    return changes


_ABSENT = object()


def _empty(value: Any) -> bool:
    return value is None or (value == 0 and not isinstance(value, bool)) or value == []


def next_recheck_ms(catalog: Catalog, state: ProfileState, now_ms: int) -> int | None:
    """The next moment a value could change with no new message: a bucket entering or
    leaving a window, or the next hour for plans that compare dates with `now`."""
    now_hour = now_ms // HOUR_MS
    best: int | None = now_hour + 1 if catalog.time_relative else None
    for stream_id, windows in catalog.windows.items():
        for hour in state.streams.get(stream_id, ()):
            for lo, hi in windows:
                for edge in (hour + lo, None if hi is None else hour + hi):
                    if edge is not None and edge > now_hour and (best is None or edge < best):
                        best = edge
    return None if best is None else best * HOUR_MS


def _earlier(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)
