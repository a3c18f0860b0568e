"""The JetStream backend refuses what it would only half serve, privacy controls included."""

from __future__ import annotations

import msgspec

from cdpd.cluster import ported
from cdpd.config import Config


def test_privacy_controls_the_backend_cannot_apply_are_refused() -> None:
    config = msgspec.convert(
        {
            "privacy": {
                "destinations": {"hook": {"red": "block"}},
                "warehouses": {"wh": {"yellow": "hash"}},
            }
        },
        Config,
    )
    problems = ported.unported(config)
    assert any(p.startswith("[privacy.destinations] controls") for p in problems)
    assert any(p.startswith("[privacy.warehouses] controls") for p in problems)
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
