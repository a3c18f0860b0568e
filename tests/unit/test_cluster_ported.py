"""The JetStream backend refuses what it would only half serve, and takes privacy controls."""

from __future__ import annotations

import msgspec

from cdpd.cluster import ported
from cdpd.config import Config


def test_privacy_controls_run_on_the_cluster_and_single_node_stages_are_refused() -> None:
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
    engage = msgspec.convert({"identity": {"space": "default"}}, Config)
    assert any(p.startswith("[identity]") for p in ported.unported(engage))
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
