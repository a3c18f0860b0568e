"""A real three-server JetStream cluster on loopback, started from the machine's `nats-server`
for the JetStream backend's tests (each server with its own store in a temporary folder)."""

from __future__ import annotations

import asyncio
import os
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
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        await self._placeable(running, deadline)

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
