"""Governance as ingest sees it: one chain per source, built from the config and the loaded
tracking plans, applied to a request's normalised messages in one call.

The chains are immutable; `reload` builds new ones (plans read again) and swaps them in whole,
so a request is governed by one set or the other, never a mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cdpd.config import Config, Source, Transformation
from cdpd.governance import browser, store, transformations
from cdpd.governance import plans as plan_files
from cdpd.governance.chain import Block, Chain, Findings, Message, Processor
from cdpd.governance.protocols import Protocols
from cdpd.governance.schema_observer import BlockedEvents, SchemaCounts, SchemaObserver
from cdpd.ingest.normalize import Rejection
from cdpd.model.rows import OutboxRow
from cdpd.privacy.inbox import FieldDetector
from cdpd.privacy.portal import Portal
from cdpd.privacy.suppression import Suppressions

OBSERVERS = (SchemaObserver, FieldDetector)


class Prepared(NamedTuple):
    """What a config about to be put in force needs, built before anything changes."""

    plans: dict[str, plan_files.Plan]
    chains: dict[str, Chain]
    privacy: Portal


@dataclass(frozen=True)
class Governed:
    """A request's messages after governance, and the rows to append with them."""

    rows: list[OutboxRow]
    rejections: list[Rejection] = field(default_factory=list)
    extra: list[tuple[str, list[tuple[object, ...]]]] = field(default_factory=list)


def build_chains(
    config: Config, plans: dict[str, plan_files.Plan], privacy: Portal | None = None
) -> dict[str, Chain]:
    privacy = privacy or Portal(config.privacy)
    chains = {}
    for source in config.sources:
        scoped = transformations.source_scoped(config.transformations, source.name)
        processors = _processors(source, plans, scoped, privacy)
        if processors:
            chains[source.name] = Chain(tuple(processors))
    return chains


def _processors(
    source: Source,
    plans: dict[str, plan_files.Plan],
    scoped: list[Transformation],
    privacy: Portal,
) -> list[Processor]:
    """The chain's order: observe what arrived (schema, personal data), block by name, remove
    the fields of blocked classes, check the plan, transform."""
    processors: list[Processor] = []
    blocked_fields = privacy.blocked_fields(source.name)
    decodes_body = source.tracking_plan is not None or bool(scoped) or blocked_fields is not None
    detector = privacy.detector(source.name)
    if source.observe_schema:  # decodes the message once for both, and feeds detection
        processors.append(SchemaObserver(source.name, shares_body=decodes_body, fields=detector))
    elif detector is not None:
        processors.append(detector)
    if source.blocked_events:
        processors.append(BlockedEvents(source.blocked_events))
    if blocked_fields is not None:
        processors.append(blocked_fields)
    if source.tracking_plan is not None:
        processors.append(Protocols(source.name, plans[source.tracking_plan], source.protocols))
    if scoped:
        processors.append(transformations.SourceTransformations(scoped))
    return processors


def _observing_only(chains: dict[str, Chain]) -> frozenset[str]:
    """The sources whose chain only observes."""
    return frozenset(
        name
        for name, chain in chains.items()
        if all(type(processor) in OBSERVERS for processor in chain.processors)
    )


class Governance:
    """The chains in force, and counts of what they did since start (for /metrics)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.plans = plan_files.load_all(config.tracking_plans)
        self.privacy = Portal(config.privacy)
        self._chains = build_chains(config, self.plans, self.privacy)
        self._observing = _observing_only(self._chains)
        self._sources = {source.name: source for source in config.sources}
        self.suppressions = Suppressions()  # kept in force by privacy/regulations_service.py
        self.schema = SchemaCounts()  # written by governance/service.py
        self.violations: dict[str, int] = {}
        self.blocked: dict[str, int] = {}
        self.reloads = 0

    def prepare(self, config: Config) -> Prepared:
        """The plans, privacy portal and chains of a config about to be put in force (raises
        PlanError, or ConfigError for a privacy salt that cannot be read)."""
        plans = plan_files.load_all(config.tracking_plans)
        privacy = self.privacy.with_config(config.privacy)
        return Prepared(plans, build_chains(config, plans, privacy), privacy)

    def put_in_force(self, config: Config, prepared: Prepared) -> None:
        """Swap in what `prepare` built, whole; the counts since start are kept."""
        self.plans, self._chains, self.privacy = prepared
        self._observing = _observing_only(self._chains)
        self._config = config
        self._sources = {source.name: source for source in config.sources}
        self.reloads += 1

    def track_plan(self, source: str) -> dict[str, Any] | None:
        """The `plan.track` map for the source's settings document (None: the default)."""
        found = self._sources.get(source)
        if found is None or (found.tracking_plan is None and not found.blocked_events):
            return None
        plan = self.plans.get(found.tracking_plan) if found.tracking_plan else None
        return browser.track_plan(found, plan)

    def apply(self, source: str, rows: Sequence[OutboxRow]) -> Governed:
        rows = self.suppressions.admit(source, rows)  # first: nothing of theirs is observed
        chain = self._chains.get(source)
        if chain is None or not rows:
            return Governed(list(rows))
        findings = Findings()
        if source in self._observing:
            # The default chain: observing changes nothing, so no message objects.
            for observer in chain.processors:
                observer.observe_rows(rows, findings)  # type: ignore[attr-defined]
            if findings.shapes:
                self.schema.add(findings.shapes, findings.seen_at)
            return Governed(list(rows))
        kept: list[OutboxRow] = []
        rejections: list[Rejection] = []
        blocked: list[tuple[object, ...]] = []
        for row in rows:
            message = Message(row)
            verdict = chain.run(message, findings)
            if verdict is None:
                kept.append(message.finish())
            elif type(verdict) is Block:
                blocked.append(store.blocked_row(message, verdict))
            else:
                rejections.append(
                    Rejection(verdict.code, verdict.reason, row.message_id, message.payload())
                )
        if findings.shapes:
            self.schema.add(findings.shapes, findings.seen_at)
        if findings.violations:
            self.violations[source] = self.violations.get(source, 0) + len(findings.violations)
        if blocked:
            self.blocked[source] = self.blocked.get(source, 0) + len(blocked)
        return Governed(kept + findings.forwarded, rejections, store.extra_rows(findings, blocked))
