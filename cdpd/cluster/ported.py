"""What a JetStream node leaves out of a config it runs (every stage runs on the cluster; what
differs from the SQLite backend is said at `cdpd check-config` and at start)."""

from __future__ import annotations

from cdpd.config import Config


def not_served(config: Config) -> list[str]:
    """What a node leaves out without harm (said at check-config and at start)."""
    notes: list[str] = []
    if config.identity is not None:
        notes.append(
            "identity and Engage run on the node holding the profiles lease; the other nodes"
            " answer the Profile API from the newest snapshot (at most snapshot_interval_s + 5 s"
            " old) and leave identifier deletions to the holder; the events history holds only"
            " the messages the holder read since it took the lease; unmerges and regulations'"
            " deletions are carried out by the holder"
        )
    if config.console.enabled:
        notes.append(
            "the console's config changes go through the cluster's confd bucket to every"
            " node's conf.d (a node started with a config file and an include); destinations"
            " change at a restart; failed attempts with their samples and a source's observed"
            " schema are not kept"
        )
        if config.identity is not None:
            notes.append(
                "the console's profiles and audiences pages on a node not holding the profiles"
                " lease read the newest snapshot, with no events history"
            )
    return notes
