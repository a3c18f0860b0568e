"""Which parts of a config the JetStream backend runs yet. A config asking for a stage that is
still single-node is refused (by `cdpd check-config` and at start), never half-served."""

from __future__ import annotations

from cdpd.config import Config

SEE = "; see docs/scaling.md, 'What is still single-node'"


def unported(config: Config) -> list[str]:
    """One line per configured stage that does not run on the JetStream backend yet."""
    problems = []
    if config.identity is not None:
        problems.append("[identity] (identity resolution, profiles) is single-node" + SEE)
    if config.audiences or config.computed_traits:
        problems.append("audiences and computed traits (Engage) are single-node" + SEE)
    return problems


def not_served(config: Config) -> list[str]:
    """What a node leaves out without harm (said at check-config and at start)."""
    notes: list[str] = []
    if config.console.enabled:
        notes.append(
            "the console's privacy, profiles and audiences pages, and its config changes, are"
            " served by the SQLite backend only"
        )
    return notes
