"""Where the console's Profiles and Audiences pages read on a JetStream node: where its Profile
API reads (`cdpd.cluster.profile_reads.NodeProfiles`). The holder of the profiles lease reads
its live identity store and Engage's file; every other node the newest snapshot it downloaded,
read-only, which has no message payloads: its pages show a dash for the events history and say
how far behind the holder they may be."""

from __future__ import annotations

from cdpd.cluster.profile_reads import READ_POLL_S, NodeProfiles
from cdpd.config import Config, engage_path
from cdpd.console.seams import ProfileFiles

HOLDER = (
    "This node holds the profiles lease and reads its live stores; its events history holds"
    " the messages it read since it took the lease."
)
SNAPSHOT = (
    "This node reads the newest snapshot of the profiles it downloaded (position {position}):"
    " at most snapshot_interval_s ({interval_s:g} s) + {poll_s:g} s behind the node holding the"
    " profiles lease, which alone keeps the events history ('–' here)."
)
NO_SNAPSHOT = (
    "No snapshot of the profiles has reached this node yet: the node holding the profiles lease"
    " stores one every snapshot_interval_s ({interval_s:g} s) once it has resolved messages,"
    " and this node looks for a new one every {poll_s:g} s."
)


class NodeProfileStores:
    """`ProfileStores` of a JetStream node; `profiles` is None without `[identity]`."""

    def __init__(self, config: Config, profiles: NodeProfiles | None) -> None:
        self._profiles = profiles
        self._engage_file = engage_path(config)
        self._interval_s = config.storage.jetstream.snapshot_interval_s

    @property
    def resolved(self) -> bool:
        return self._profiles is not None

    def files(self) -> ProfileFiles:
        profiles = self._profiles
        if profiles is None:
            return ProfileFiles(None, None)
        live = profiles.live
        if live is not None:
            return ProfileFiles(live.reader, self._engage_file, notes=(HOLDER,))
        view = profiles.view
        if view is None:
            missing = NO_SNAPSHOT.format(interval_s=self._interval_s, poll_s=READ_POLL_S)
            return ProfileFiles(None, None, events_kept=False, notes=(missing,), missing=missing)
        note = SNAPSHOT.format(
            position=view.name.position, interval_s=self._interval_s, poll_s=READ_POLL_S
        )
        engage = view.folder / "engage.sqlite3" if view.engage is not None else None
        return ProfileFiles(view.reader, engage, events_kept=False, notes=(note,))
