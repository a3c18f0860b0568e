"""What a JetStream node says it leaves out: nothing of the privacy controls; the profiles
pages' snapshot reads with identity and Engage."""

from __future__ import annotations

import msgspec

from cdpd.cluster import ported
from cdpd.config import Config


def test_privacy_controls_are_served_whole_on_the_cluster() -> None:
    config = msgspec.convert(
        {
            "privacy": {
                "destinations": {"hook": {"red": "block"}},
                "warehouses": {"wh": {"yellow": "hash"}},
            }
        },
        Config,
    )
    assert not any("privacy inbox" in note for note in ported.not_served(config))


def test_identity_and_engage_note_the_snapshot_reads() -> None:
    config = msgspec.convert(
        {
            "identity": {"space": "main", "access_tokens": ["tok"]},
            "audiences": [{"key": "buyers", "query": "event('Order').count() >= 1"}],
        },
        Config,
    )
    notes = ported.not_served(config)
    assert not any("privacy" in note for note in notes)  # the console's Privacy page is served
    assert any("profiles and audiences pages" in note and "snapshot" in note for note in notes)
