"""Delivery state every node shares through JetStream key-value buckets: a destination's
circuit (`CDPD_circuits`, key = destination name) and its global rate limit (`CDPD_rates`:
one key `<destination>.<window>.<slot>` per request allowed in a window).

A node's lane keeps a local `Circuit` (delivery/circuit.py) and publishes it when it changes
state; every lane reads the shared one before it takes work, so one node opening a circuit
pauses every node's lane, and the right to probe is claimed by creating the key
`<destination>.probe.<probe_at_ms>` in `CDPD_rates`: one node probes at a time.

Claims use `create` (the key must not exist), never `update` with an expected revision:
nats-server 2.9 checks a clustered stream's expected last sequence against applied state, so
concurrent updates naming one revision can all succeed; a create of one key succeeds once.
The rates bucket's TTL removes old windows and probe claims."""

from __future__ import annotations

import asyncio
import math

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cdpd.clock import Clock
from cdpd.delivery.circuit import Circuit, State

REFRESH_EVERY_MS = 250
# A probe not answered in this long was lost with its node: another node may probe.
PROBE_LOST_MS = 60_000


class CircuitRecord(msgspec.Struct, frozen=True):
    """A circuit as stored in the bucket (JSON)."""

    state: State = "closed"
    probe_at_ms: int = 0
    paused_until_ms: int = 0
    probes: int = 0
    opened_at_ms: int | None = None
    by: str = ""  # the node that last changed it


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CircuitRecord)


class SharedCircuit:
    """The destination's circuit as every node sees it."""

    def __init__(
        self, kv: KeyValue, claims: KeyValue, destination: str, node: str, clock: Clock
    ) -> None:
        self.circuit = Circuit()
        self._kv = kv
        self._claims = claims
        self._key = destination
        self._node = node
        self._clock = clock
        self._read_at_ms = -REFRESH_EVERY_MS
        self._revision = 0

    async def refresh(self) -> None:
        """Take the shared state (at most every REFRESH_EVERY_MS)."""
        now = self._clock.now_ms()
        if now - self._read_at_ms < REFRESH_EVERY_MS:
            return
        self._read_at_ms = now
        record, self._revision = await self._read()
        self._apply(record)

    async def publish(self) -> None:
        """Store the local circuit as the shared one."""
        self._revision = await self._kv.put(self._key, _encoder.encode(self._record()))

    async def claim_probe(self) -> bool:
        """Whether this node may send the probe now: the shared circuit is open, its probe is
        due, and this node changed it to probing before any other node did."""
        record, _ = await self._read()
        self._apply(record)
        if not self.circuit.may_probe(self._clock.now_ms()):
            return False
        claim = f"{self._key}.probe.{self.circuit.probe_at_ms}"
        try:
            await self._claims.create(claim, self._node.encode())
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return False
        self.circuit.start_probe()
        await self.publish()
        return True

    async def _read(self) -> tuple[CircuitRecord, int]:
        try:
            entry = await self._kv.get(self._key)
        except KeyNotFoundError:
            return CircuitRecord(), 0
        try:
            return _decoder.decode(entry.value or b""), entry.revision or 0
        except msgspec.DecodeError:
            return CircuitRecord(), entry.revision or 0

    def _apply(self, record: CircuitRecord) -> None:
        circuit = self.circuit
        if record.state == "probing" and self._clock.now_ms() > record.probe_at_ms + PROBE_LOST_MS:
            record = msgspec.structs.replace(record, state="open")
        circuit.paused_until_ms = max(circuit.paused_until_ms, record.paused_until_ms)
        if record.state == circuit.state and record.probes == circuit.probes:
            return
        circuit.state = record.state
        circuit.probe_at_ms = record.probe_at_ms
        circuit.probes = record.probes
        circuit.opened_at_ms = record.opened_at_ms
        if record.state == "closed":
            circuit.failures_in_a_row = 0

    def _record(self) -> CircuitRecord:
        c = self.circuit
        return CircuitRecord(
            c.state, c.probe_at_ms, c.paused_until_ms, c.probes, c.opened_at_ms, self._node
        )


async def read_circuit(kv: KeyValue, destination: str) -> CircuitRecord:
    try:
        entry = await kv.get(destination)
    except KeyNotFoundError:
        return CircuitRecord()
    try:
        return _decoder.decode(entry.value or b"")
    except msgspec.DecodeError:
        return CircuitRecord()


async def close_circuit(kv: KeyValue, destination: str, node: str) -> None:
    """`cdpd deliveries retry`: every node's lane sends again at once."""
    await kv.put(destination, _encoder.encode(CircuitRecord(by=node)))


class GlobalRateLimit:
    """At most `per_s` requests a second to the destination from all nodes together.

    Time is cut into windows of `window_ms` (one second, or longer for a limit under one a
    second) allowing `allowed` requests each; a request takes one of the window's slots by
    creating its key, so two nodes can never take the same one."""

    def __init__(self, kv: KeyValue, destination: str, per_s: float, clock: Clock) -> None:
        self._kv = kv
        self._destination = destination
        self._clock = clock
        self.per_s = per_s
        self.window_ms = 1000 if per_s >= 1 else math.ceil(1000 / per_s) if per_s > 0 else 0
        self.allowed = max(1, math.floor(per_s * self.window_ms / 1000))
        self._window = -1
        self._next_slot = 0  # slots below it are known to be taken

    async def acquire(self, interrupt: asyncio.Event) -> bool:
        """Wait for a request's share of the window; False when `interrupt` was set first."""
        if self.per_s <= 0:
            return True
        while not interrupt.is_set():
            now = self._clock.now_ms()
            window = now // self.window_ms
            if await self._take(window):
                return True
            next_window_s = ((window + 1) * self.window_ms - now) / 1000
            if await self._clock.wait(interrupt, max(next_window_s, 0.001)):
                return False
        return False

    async def _take(self, window: int) -> bool:
        """One slot of the window; False when every slot is taken."""
        if window != self._window:
            self._window, self._next_slot = window, 0
        while self._next_slot < self.allowed:
            slot = self._next_slot
            self._next_slot += 1
            try:
                await self._kv.create(f"{self._destination}.{window}.{slot}", b"")
                return True
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                continue  # another request (of this node or another) has it
        return False
