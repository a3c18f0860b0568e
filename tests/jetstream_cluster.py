"""A real three-server JetStream cluster on loopback, started from the machine's `nats-server`
for the JetStream backend's tests (each server with its own store in a temporary folder)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

CLUSTER_NAME = "cdpd-test"


def require_nats_server() -> str:
    """The `nats-server` binary; skip without it on a user's machine, fail under CI=true."""
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if found is None:
        reason = "nats-server is not installed (Debian package nats-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: the JetStream backend's tests need it)")
        pytest.skip(reason)
    return found


def _free_ports(count: int) -> list[int]:
    """Ports nothing listens on, below the kernel's ephemeral range: a port the kernel gave
    out to bind(0) is free only until a nats-server binds it, and meanwhile any outgoing
    connection of another test may take it as its own. Drawn from the system's randomness,
    which no test seeds."""
    low, high = _outside_ephemeral_range()
    chosen: list[int] = []
    while len(chosen) < count:
        port = low + secrets.randbelow(high - low)
        if port not in chosen and _bindable(port):
            chosen.append(port)
    return chosen


def _outside_ephemeral_range() -> tuple[int, int]:
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return (20000, first) if first > 21000 else (first // 2, first)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class JetStreamCluster:
    """Three servers; `stop(i)` and `start(i)` take one down and bring it back on its store."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.binary = require_nats_server()
        self.root = root
        ports = _free_ports(2 * size)
        self.client_ports = ports[:size]
        self.route_ports = ports[size:]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.client_ports]

    def url(self, index: int) -> str:
        return self.urls[index]

    def _command(self, index: int) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in self.route_ports)
        store = self.root / f"n{index}"
        store.mkdir(parents=True, exist_ok=True)
        return [
            self.binary,
            "-a", "127.0.0.1",
            "-p", str(self.client_ports[index]),
            "-n", f"n{index}",
            "-js",
            "-sd", str(store),
            "--cluster_name", CLUSTER_NAME,
            "-cluster", f"nats://127.0.0.1:{self.route_ports[index]}",
            "-routes", routes,
            "-l", str(self.root / f"n{index}.log"),
        ]  # fmt: skip

    def start(self, index: int) -> None:
        if self.processes[index] is None:
            self.processes[index] = subprocess.Popen(self._command(index))

    def stop(self, index: int) -> None:
        process = self.processes[index]
        if process is not None:
            process.terminate()
            process.wait(10)
            self.processes[index] = None

    def kill(self, index: int) -> None:
        process = self.processes[index]
        if process is not None:
            process.kill()
            process.wait(10)
            self.processes[index] = None

    def stop_all(self) -> None:
        for index in range(len(self.processes)):
            self.stop(index)

    async def ready(self, timeout_s: float = 90.0) -> None:
        """Until JetStream answers through every running server (a meta leader is elected) and
        can place a stream on as many servers as are running (every peer has joined). Three
        servers restarted together on a busy machine may take most of a minute to elect one."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        running = [self.urls[i] for i, p in enumerate(self.processes) if p is not None]
        for url in running:
            while True:
                try:
                    client = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
                    try:
                        await client.jetstream().account_info()
                        break
                    finally:
                        await client.close()
                except Exception:
                    self._check_running()
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        await self._placeable(running, deadline)

    def _check_running(self) -> None:
        """A server that exited (its port taken, say) will not answer: say so at once."""
        for index, process in enumerate(self.processes):
            if process is not None and process.poll() is not None:
                log = self.root / f"n{index}.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"nats-server n{index} exited ({process.returncode}): {tail}")

    async def _placeable(self, running: list[str], deadline: float) -> None:
        probe = StreamConfig(
            name="READY_PROBE", subjects=["ready.probe"], num_replicas=len(running)
        )
        client = await nats.connect(running, connect_timeout=1)
        try:
            js = client.jetstream()
            while True:
                try:
                    await js.add_stream(probe)
                    await js.delete_stream("READY_PROBE")
                    return
                except Exception:  # "no suitable peers for placement" until all have joined
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await client.close()


@asynccontextmanager
async def jetstream_cluster(root: Path, size: int = 3) -> AsyncIterator[JetStreamCluster]:
    cluster = JetStreamCluster(root, size)
    try:
        for index in range(size):
            cluster.start(index)
        await cluster.ready()
        yield cluster
    finally:
        cluster.stop_all()
