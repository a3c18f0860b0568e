"""The Protocols processor: checks a message against its source's tracking plan, writes the
verdict into `context.protocols`, omits or blocks as the source's settings say, and records
every violation (and, when asked, a `Violation Generated` event for another source).

Enforcement follows Segment's schema configuration: unplanned events and properties (traits)
first, then the rule's JSON Schema, then the common schema. Pure: no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from cdpd.config import SourceProtocols, TrackProtocols, TraitProtocols
from cdpd.governance.chain import Block, Findings, Message, Verdict, ViolationRow
from cdpd.governance.plans import Plan, Rule
from cdpd.governance.wording import Violation, violations
from cdpd.model.rows import OutboxRow

_encode = msgspec.json.Encoder().encode
FORWARD_NAMESPACE = uuid.UUID("8d5a3f0e-4a53-4a7e-9c43-7d1f0c6c3b61")
TRAIT_KINDS = frozenset({"identify", "group"})
# Page and screen calls without a PAGE/SCREEN rule of their own are checked as these events.
VIEWED_EVENTS = {"page": "Page Viewed", "screen": "Screen Viewed"}


class Protocols:
    def __init__(self, source: str, plan: Plan, settings: SourceProtocols) -> None:
        self._source = source
        self._plan = plan
        self._settings = settings
        self._common = plan.rule("COMMON", None)

    def __call__(self, message: Message, findings: Findings) -> Verdict:
        kind = message.row.type
        body = message.body
        version = _event_version(body)
        if self._clean(kind, body, version):
            return None
        verdict = _Verdict()
        if kind in ("track", "page", "screen"):
            blocked = self._check_event(kind, body, version, verdict, self._settings.track)
        elif kind in ("identify", "group"):
            traits = self._settings.identify if kind == "identify" else self._settings.group
            blocked = self._check_traits(kind, body, version, verdict, traits)
        else:
            blocked = None
        if blocked is None and self._common is not None:
            blocked = self._check_common(kind, body, verdict)
        if verdict.empty():
            return blocked
        self._annotate(message, verdict)
        self._record(message, verdict, findings, blocked is not None)
        if blocked is not None and self._settings.forwardingBlockedEventsTo:
            target = self._settings.forwardingBlockedEventsTo
            findings.forwarded.append(
                msgspec.structs.replace(message.row, source=target, payload=message.payload())
            )
        return blocked

    def _clean(self, kind: str, body: dict[str, Any], version: object) -> bool:
        """The common case, decided with the fewest steps: a message with a rule, only planned
        names and valid values, that meets the common schema (or an unplanned page or screen)."""
        if kind in TRAIT_KINDS:
            rule = self._plan.rule(kind.upper(), None, version)
        elif kind == "alias":
            rule = None
        else:
            rule = self._event_rule(kind, body, version)
            if rule is None and kind == "track":
                return False
        if rule is not None:
            values = body.get(rule.section or "properties")
            if isinstance(values, dict) and not rule.planned.issuperset(values):
                return False
            if not rule.validator.is_valid(body):
                return False
        common = self._common
        return common is None or bool(common.validator.is_valid(body))

    # -- the checks ------------------------------------------------------------------------------

    def _check_event(
        self, kind: str, body: dict[str, Any], version: object, verdict: _Verdict, s: TrackProtocols
    ) -> Block | None:
        rule = self._event_rule(kind, body, version)
        if rule is None:
            if kind != "track":
                return None  # unplanned pages and screens are not blocked
            name = body.get("event")
            verdict.add(Violation("Unplanned Event", "event", f"Event {name} is not planned"))
            if not s.allowUnplannedEvents:
                return Block("unplanned_event", f"{name!r} is not in the tracking plan")
            return None
        return self._check_section(
            rule,
            body,
            verdict,
            "Unplanned Property",
            allow_unplanned=s.allowUnplannedEventProperties,
            allow_values=s.allowPropertiesOnViolations,
            allow_event=s.allowEventOnViolations,
        )

    def _check_traits(
        self, kind: str, body: dict[str, Any], version: object, verdict: _Verdict, s: TraitProtocols
    ) -> Block | None:
        rule = self._plan.rule(kind.upper(), None, version)
        if rule is None:
            return None
        return self._check_section(
            rule,
            body,
            verdict,
            "Unplanned Trait",
            allow_unplanned=s.allowUnplannedTraits,
            allow_values=s.allowTraitsOnViolations,
            allow_event=True,
        )

    def _check_section(
        self,
        rule: Rule,
        body: dict[str, Any],
        verdict: _Verdict,
        unplanned_type: str,
        *,
        allow_unplanned: bool,
        allow_values: bool,
        allow_event: bool,
    ) -> Block | None:
        section = rule.section or "properties"
        values = body.get(section)
        if isinstance(values, dict) and not rule.planned.issuperset(values):
            for name in values:
                if name not in rule.planned:
                    field = f"{section}.{name}"
                    verdict.add(Violation(unplanned_type, field, f"{field} is not planned"))
                    if not allow_unplanned:
                        verdict.omitted.append(name)
        failing = self._validate(rule, body, verdict, section)
        if failing is None:
            return None
        if not allow_event:
            return Block("violations", f"the message breaks its tracking plan rule ({failing})")
        if not allow_values:
            verdict.omitted_on_violation.extend(failing.names)
        return None

    def _check_common(self, kind: str, body: dict[str, Any], verdict: _Verdict) -> Block | None:
        assert self._common is not None
        section = "traits" if kind in ("identify", "group") else "properties"
        failing = self._validate(self._common, body, verdict, section)
        if failing is None:
            return None
        setting = self._common_setting(kind)
        if setting == "BLOCK":
            return Block("common_violations", f"the message breaks the common schema ({failing})")
        if setting in ("OMIT_PROPERTIES", "OMIT_TRAITS"):
            verdict.omitted_on_violation.extend(failing.names)
        return None

    def _common_setting(self, kind: str) -> str:
        if kind == "identify":
            return self._settings.identify.commonEventOnViolations
        if kind == "group":
            return self._settings.group.commonEventOnViolations
        return self._settings.track.commonEventOnViolations

    def _validate(
        self, rule: Rule, body: dict[str, Any], verdict: _Verdict, section: str
    ) -> _Failing | None:
        """Record the rule's violations; None when there are none."""
        if rule.validator.is_valid(body):
            return None
        failing = _Failing()
        for error in rule.validator.iter_errors(body):
            found = list(violations(error, rule.schema))
            for violation in found:
                verdict.add(violation)
            failing.count += len(found)
            path = list(error.instance_path)
            # Only a value that fails is omitted: a missing required name omits nothing.
            if len(path) >= 2 and path[0] == section and error.kind.name != "required":
                name = str(path[1])
                if name not in failing.names:
                    failing.names.append(name)
        return failing

    def _event_rule(self, kind: str, body: dict[str, Any], version: object) -> Rule | None:
        if kind == "track":
            return self._plan.rule("TRACK", body.get("event"), version)
        rule_type = kind.upper()
        name = body.get("name")
        if isinstance(name, str) and self._plan.has(rule_type, name):
            return self._plan.rule(rule_type, name, version)
        return self._plan.rule(rule_type, None, version) or self._plan.rule(
            "TRACK", VIEWED_EVENTS[kind], version
        )

    # -- the verdict -----------------------------------------------------------------------------

    def _annotate(self, message: Message, verdict: _Verdict) -> None:
        body = message.body
        section = "traits" if message.row.type in ("identify", "group") else "properties"
        values = body.get(section)
        if isinstance(values, dict) and (verdict.omitted or verdict.omitted_on_violation):
            drop = {*verdict.omitted, *verdict.omitted_on_violation}
            body[section] = {k: v for k, v in values.items() if k not in drop}
        context = body.get("context")
        if not isinstance(context, dict):
            context = body["context"] = {}
        protocols = context.get("protocols")
        context["protocols"] = {
            **(protocols if isinstance(protocols, dict) else {}),
            "sourceId": self._source,
            "violations": [msgspec.structs.asdict(v) for v in verdict.violations],
            "omitted": verdict.omitted,
            "omitted_on_violation": verdict.omitted_on_violation,
        }
        message.changed()

    def _record(
        self, message: Message, verdict: _Verdict, findings: Findings, blocked: bool
    ) -> None:
        row = message.row
        for violation in verdict.violations:
            findings.violations.append(
                ViolationRow(
                    received_at=row.received_at,
                    source=self._source,
                    tracking_plan=self._plan.name,
                    message_id=row.message_id,
                    type=row.type,
                    event=row.event,
                    violation_type=violation.type,
                    field=violation.field,
                    description=violation.description,
                    blocked=int(blocked),
                )
            )
        target = self._settings.forwardingViolationsTo
        if target:
            findings.forwarded += violation_events(
                target, self._source, self._plan.name, message.row, message.body, verdict.violations
            )


class _Verdict:
    __slots__ = ("omitted", "omitted_on_violation", "violations")

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.omitted: list[str] = []
        self.omitted_on_violation: list[str] = []

    def add(self, violation: Violation) -> None:
        self.violations.append(violation)

    def empty(self) -> bool:
        return not self.violations and not self.omitted and not self.omitted_on_violation


class _Failing:
    __slots__ = ("count", "names")

    def __init__(self) -> None:
        self.count = 0
        self.names: list[str] = []

    def __str__(self) -> str:
        return f"{self.count} violation{'s' if self.count != 1 else ''}"


def _event_version(body: dict[str, Any]) -> object:
    context = body.get("context")
    if not isinstance(context, dict):
        return None
    protocols = context.get("protocols")
    return protocols.get("event_version") if isinstance(protocols, dict) else None


def violation_events(
    target: str,
    source: str,
    plan_name: str,
    row: OutboxRow,
    body: dict[str, Any],
    found: Iterable[Violation],
) -> list[OutboxRow]:
    """One `Violation Generated` track event per violation, as Segment forwards them."""
    context = body.get("context") if isinstance(body.get("context"), dict) else {}
    app = context.get("app") if isinstance(context, dict) else None
    app_version = app.get("version") if isinstance(app, dict) else None
    rows = []
    for index, violation in enumerate(found):
        message_id = "sch-" + str(uuid.uuid5(FORWARD_NAMESPACE, f"{row.message_id}/{index}"))
        event = {
            "type": "track",
            "event": "Violation Generated",
            "userId": "schema-violations",
            "messageId": message_id,
            "forwardedFromProject": source,
            "timestamp": row.received_at,
            "receivedAt": row.received_at,
            "properties": {
                "appVersion": app_version,
                "eventMessageID": row.message_id,
                "eventName": row.event,
                "eventSentAt": body.get("sentAt"),
                "eventTimestamp": body.get("timestamp"),
                "eventType": row.type,
                "sourceID": source,
                "sourceName": source,
                "sourceSlug": source,
                "trackingPlanID": plan_name,
                "trackingPlanName": plan_name,
                "violationDescription": violation.description,
                "violationField": violation.field,
                "violationType": violation.type,
            },
        }
        rows.append(
            OutboxRow(
                message_id=message_id,
                source=target,
                type="track",
                event="Violation Generated",
                user_id="schema-violations",
                anonymous_id=None,
                received_at=row.received_at,
                payload=_encode(event).decode(),
            )
        )
    return rows
