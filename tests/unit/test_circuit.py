"""The lane's circuit breaker (pure: the time is passed in)."""

from __future__ import annotations

from cdpd.delivery.circuit import Circuit


def test_opens_after_the_threshold_of_failures_in_a_row() -> None:
    circuit = Circuit(threshold=3, initial_s=1, max_s=8)
    for _ in range(2):
        circuit.failed(0, None, None)
    assert circuit.state == "closed"
    assert circuit.may_send(0)
    circuit.failed(0, None, 503)
    assert circuit.state == "open"
    assert not circuit.may_send(0)
    assert not circuit.may_probe(999)
    assert circuit.may_probe(1000)


def test_a_success_in_between_starts_the_count_again() -> None:
    circuit = Circuit(threshold=2)
    circuit.failed(0, None, None)
    assert not circuit.succeeded()  # it was closed
    circuit.failed(0, None, None)
    assert circuit.state == "closed"


def test_failed_probes_double_the_wait_up_to_the_cap() -> None:
    circuit = Circuit(threshold=1, initial_s=1, max_s=4)
    circuit.failed(0, None, None)
    waits = []
    now = 0
    for _ in range(5):
        now = circuit.probe_at_ms
        assert circuit.may_probe(now)
        circuit.start_probe()
        assert not circuit.may_send(now)
        assert not circuit.may_probe(now)
        circuit.failed(now, None, None)
        waits.append(circuit.probe_at_ms - now)
    assert waits == [2000, 4000, 4000, 4000, 4000]
    circuit.start_probe()
    assert circuit.succeeded()
    assert circuit.state == "closed"
    assert circuit.may_send(now)


def test_retry_after_on_429_or_503_pauses_the_lane() -> None:
    circuit = Circuit(threshold=5)
    circuit.failed(1000, 5.0, 429)
    assert circuit.state == "closed"
    assert not circuit.may_send(5999)
    assert circuit.may_send(6000)
    assert circuit.wait_ms(1000) == 5000
    circuit.failed(1000, 5.0, 500)  # Retry-After only counts with 429 and 503
    assert circuit.paused_until_ms == 6000
