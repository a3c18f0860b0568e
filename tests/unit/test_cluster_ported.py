"""The JetStream backend runs every stage: privacy controls, identity and Engage are taken."""

from __future__ import annotations

import msgspec

from cdpd.cluster import ported
from cdpd.config import Config


def test_privacy_controls_run_on_the_cluster() -> None:
    config = msgspec.convert(
        {
            "privacy": {
                "destinations": {"hook": {"red": "block"}},
                "warehouses": {"wh": {"yellow": "hash"}},
            }
        },
        Config,
    )
    assert ported.unported(config) == []
    assert not any("privacy inbox" in note for note in ported.not_served(config))
    assert ported.unported(Config()) == []


def test_identity_and_engage_run_on_the_jetstream_backend() -> None:
    config = msgspec.convert(
        {
            "identity": {"space": "main", "access_tokens": ["tok"]},
            "audiences": [{"key": "buyers", "query": "event('Order').count() >= 1"}],
        },
        Config,
    )
    assert ported.unported(config) == []
    notes = ported.not_served(config)
    assert not any("privacy" in note for note in notes)  # the console's Privacy page is served
    assert any("profiles and audiences pages" in note and "snapshot" in note for note in notes)
