"""cdpd as a systemd `Type=notify` service: sd_notify datagrams, the watchdog and SIGTERM drain.

Each test runs the real `cdpd serve` as a child process and plays systemd's part: it binds the
datagram socket named by $NOTIFY_SOCKET, reads what the daemon sends and stops it with SIGTERM
(systemd's KillSignal=). Nothing here sleeps to wait: every step awaits a datagram, a log
line, a response or the process exit, each with a timeout.
"""

from __future__ import annotations

import array
import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest

from tests.helpers import WRITE_KEY, Daemon, basic_auth, config_text, query, spawn_cdpd

pytestmark = pytest.mark.system

TIMEOUT_S = 20
# Longer than server.shutdown_timeout_s (30 s by default): how long a stop may take at worst.
DRAIN_TIMEOUT_S = 45
# Environment variables the service manager sets; cleared so a test run that is itself under
# systemd (a CI runner as a service) does not leak its own socket or watchdog into cdpd.
SERVICE_MANAGER_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")

StartCdpd = Callable[..., Awaitable[Daemon]]


# -- playing systemd's side of sd_notify ----------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One sd_notify datagram: its KEY=VALUE lines and the pid the kernel says sent it."""

    state: dict[str, str]
    sender_pid: int


class NotifySocket:
    """The AF_UNIX datagram socket a service manager listens on, read from the event loop."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what NOTIFY_SOCKET is set to
        self.received: list[Notification] = []
        # SO_PASSCRED makes the kernel attach the sender's pid, which is what systemd checks
        # for NotifyAccess=main.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)

    async def next(self) -> Notification:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Notification] = loop.create_future()

        def readable() -> None:
            if done.done():
                return
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(3 * array.array("i").itemsize)
                )
            except BlockingIOError:
                return
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = array.array("i", payload[: 3 * array.array("i").itemsize])[0]
            lines = data.decode().splitlines()
            state = dict(line.split("=", 1) for line in lines if "=" in line)
            done.set_result(Notification(state, pid))

        loop.add_reader(self.sock.fileno(), readable)
        try:
            notification = await asyncio.wait_for(done, TIMEOUT_S)
        finally:
            loop.remove_reader(self.sock.fileno())
        self.received.append(notification)
        return notification

    async def wait_for(self, key: str, value: str = "1") -> Notification:
        """Read datagrams until one carries KEY=value; the ones before it stay in `received`."""
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                notification = await self.next()
                if notification.state.get(key) == value:
                    return notification


@pytest.fixture(autouse=True)
def _no_inherited_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVICE_MANAGER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short directory under /tmp: AF_UNIX paths are limited to 108 bytes, and pytest's
    # tmp_path can be longer than that.
    directory = tempfile.mkdtemp(prefix="cdpd-notify-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        yield NotifySocket(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_notify_socket() -> Iterator[NotifySocket]:
    name = f"cdpd-test-notify-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
        yield NotifySocket(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture
async def start_cdpd(tmp_path: Path, data_dir: Path) -> AsyncIterator[StartCdpd]:
    """Start `cdpd serve` (config_text(data_dir) unless `config` is given) with extra environment;
    whatever a failed test leaves running is killed."""
    config_path = tmp_path / "cdpd.toml"
    started: list[Daemon] = []

    async def start(config: str | None = None, **env: str) -> Daemon:
        config_path.write_text(config_text(data_dir) if config is None else config)
        daemon = await spawn_cdpd(config_path, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.returncode is None:
            daemon.proc.kill()
        await daemon.stop(timeout_s=DRAIN_TIMEOUT_S)


def events(daemon: Daemon) -> list[str]:
    return [line.get("event", "") for line in daemon.log_lines]


# -- READY, STOPPING, WATCHDOG ------------------------------------------------------------------


async def test_ready_then_stopping_and_exit_code_0_on_sigterm(
    start_cdpd: StartCdpd, notify_socket: NotifySocket
) -> None:
    daemon = await start_cdpd(NOTIFY_SOCKET=notify_socket.env_value)

    ready = await notify_socket.wait_for("READY")
    assert ready.sender_pid == daemon.proc.pid  # NotifyAccess=main accepts only the main pid

    assert await daemon.stop() == 0
    stopping = await notify_socket.wait_for("STOPPING")
    assert stopping.sender_pid == daemon.proc.pid
    assert events(daemon).index("stopping") < events(daemon).index("stopped")


async def test_watchdog_pings_repeat_while_it_runs(
    start_cdpd: StartCdpd, notify_socket: NotifySocket
) -> None:
    # WatchdogSec=0.2s, with WATCHDOG_PID unset as sd_watchdog_enabled(3) allows: cdpd should
    # ping every 0.1 s.
    daemon = await start_cdpd(NOTIFY_SOCKET=notify_socket.env_value, WATCHDOG_USEC="200000")

    await notify_socket.wait_for("READY")
    first = await notify_socket.wait_for("WATCHDOG")
    second = await notify_socket.wait_for("WATCHDOG")
    assert first.sender_pid == second.sender_pid == daemon.proc.pid

    assert await daemon.stop() == 0
    await notify_socket.wait_for("STOPPING")


async def test_no_watchdog_pings_when_the_watchdog_is_meant_for_another_process(
    start_cdpd: StartCdpd, notify_socket: NotifySocket
) -> None:
    # sd_watchdog_enabled(3): WATCHDOG_PID names the process the watchdog is for. Here it is
    # this test process, not cdpd, so cdpd must not ping.
    daemon = await start_cdpd(
        NOTIFY_SOCKET=notify_socket.env_value,
        WATCHDOG_USEC="200000",
        WATCHDOG_PID=str(os.getpid()),
    )
    # A first ping would be sent right after READY=1, before the "listening" line that
    # start_cdpd waited for is flushed, so by STOPPING=1 any ping would have been received.
    assert await daemon.stop() == 0
    await notify_socket.wait_for("STOPPING")

    states = [n.state for n in notify_socket.received]
    assert any(state.get("READY") == "1" for state in states)
    assert not any("WATCHDOG" in state for state in states)


async def test_abstract_notify_socket_gets_ready(
    start_cdpd: StartCdpd, abstract_notify_socket: NotifySocket
) -> None:
    # systemd writes an abstract socket address with a leading "@".
    daemon = await start_cdpd(NOTIFY_SOCKET=abstract_notify_socket.env_value)

    ready = await abstract_notify_socket.wait_for("READY")
    assert ready.sender_pid == daemon.proc.pid

    assert await daemon.stop() == 0
    await abstract_notify_socket.wait_for("STOPPING")


# -- SIGTERM drains in-flight requests ------------------------------------------------------------


EVENTS_PER_REQUEST = 1000
BATCH_HEADERS = {"Authorization": basic_auth(WRITE_KEY), "Content-Type": "application/json"}


def batch_body(request_no: int) -> tuple[bytes, list[str]]:
    ids = [f"r{request_no}-m{i}" for i in range(EVENTS_PER_REQUEST)]
    batch = [{"type": "track", "userId": "u1", "event": "Signed Up", "messageId": m} for m in ids]
    return msgspec.json.encode({"batch": batch}), ids


async def post_batch(
    session: aiohttp.ClientSession, url: str, body: bytes, n: int
) -> int | BaseException:
    """The status, or the connection error a client can see during a shutdown."""
    try:
        async with session.post(
            f"{url}/v1/batch", data=body, headers=BATCH_HEADERS, trace_request_ctx={"n": n}
        ) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientConnectionError, OSError) as exc:
        return exc


async def test_sigterm_finishes_in_flight_requests(start_cdpd: StartCdpd, data_dir: Path) -> None:
    daemon = await start_cdpd()
    bodies = [batch_body(n) for n in range(8)]
    headers_sent = [asyncio.Event() for _ in bodies]

    async def on_headers_sent(
        _session: aiohttp.ClientSession,
        context: SimpleNamespace,
        _params: aiohttp.TraceRequestHeadersSentParams,
    ) -> None:
        if context.trace_request_ctx is not None:  # the warm-up GETs carry none
            headers_sent[context.trace_request_ctx["n"]].set()

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(on_headers_sent)
    connector = aiohttp.TCPConnector(limit=len(bodies))
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        # Open (and have cdpd accept) every connection first, so each POST below is a
        # request on an accepted connection, which shutdown must answer.
        await asyncio.gather(*(_health(session, daemon.url) for _ in bodies))
        posts = [
            asyncio.create_task(post_batch(session, daemon.url, body, n), name=f"post-{n}")
            for n, (body, _) in enumerate(bodies)
        ]
        # The signal goes out once every request is on the wire: each is then answered, or its
        # connection is closed or refused, as happens to real clients during a restart.
        async with asyncio.timeout(TIMEOUT_S):
            for event in headers_sent:
                await event.wait()
        code = await daemon.stop(timeout_s=DRAIN_TIMEOUT_S)
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            results = await asyncio.gather(*posts)

    assert code == 0
    assert results == [200] * len(bodies), results

    stored = {row[0] for row in query(data_dir, "SELECT message_id FROM messages")}
    for result, (_, ids) in zip(results, bodies, strict=True):
        if result == 200:
            missing = set(ids) - stored
            assert not missing, f"{len(missing)} acknowledged messages are not in the outbox"

    seen = events(daemon)
    assert "stopping" in seen
    assert "stopped" in seen
    assert seen.index("stopping") < seen.index("stopped")


async def _health(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(f"{url}/health") as response:
        assert response.status == 200
        await response.read()


class RawConnection:
    """One HTTP/1.1 connection written by hand, for the steps a client library hides."""

    def __init__(self, url: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.netloc = urlsplit(url).netloc
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(url, reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self) -> tuple[int, bytes]:
        """Status and body of the next response (interim 1xx responses included)."""
        async with asyncio.timeout(TIMEOUT_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines if line)
            }
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), body

    async def close(self) -> None:
        self.writer.close()
        with suppress(OSError):
            await self.writer.wait_closed()


async def test_sigterm_reads_the_rest_of_a_body_that_is_still_arriving(
    start_cdpd: StartCdpd, data_dir: Path, notify_socket: NotifySocket
) -> None:
    # A short drain timeout, so that a failure shows in 2 s rather than 30 s.
    config = config_text(data_dir).replace("[server]\n", "[server]\nshutdown_timeout_s = 2\n", 1)
    daemon = await start_cdpd(config=config, NOTIFY_SOCKET=notify_socket.env_value)
    await notify_socket.wait_for("READY")
    body, ids = batch_body(0)

    # The request is in flight: cdpd took its headers and answered 100 Continue.
    upload = await RawConnection.open(daemon.url)
    await upload.send(
        (
            f"POST /v1/batch HTTP/1.1\r\nHost: {upload.netloc}\r\n"
            f"Authorization: {basic_auth(WRITE_KEY)}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
    )
    assert (await upload.read_response())[0] == 100

    # A keep-alive connection that has had its request answered.
    idle = await RawConnection.open(daemon.url)
    health = f"GET /health HTTP/1.1\r\nHost: {idle.netloc}\r\n\r\n".encode()
    await idle.send(health)
    assert (await idle.read_response())[0] == 200

    try:
        daemon.proc.terminate()
        # STOPPING=1 goes out as the drain begins; only then is the rest of the body sent.
        await notify_socket.wait_for("STOPPING")
        # While the upload is unfinished, a kept-alive connection still gets an answer (here
        # the health check says the daemon is stopping), and is closed after it.
        await idle.send(health)
        assert (await idle.read_response())[0] == 503
        assert await asyncio.wait_for(idle.reader.read(), TIMEOUT_S) == b""
        await upload.send(body)
        status, answer = await upload.read_response()
    finally:
        await upload.close()
        await idle.close()
        assert await daemon.stop(timeout_s=DRAIN_TIMEOUT_S) == 0

    assert (status, msgspec.json.decode(answer)) == (200, {"success": True})
    stored = {row[0] for row in query(data_dir, "SELECT message_id FROM messages")}
    assert set(ids) <= stored


async def test_port_is_closed_after_shutdown(
    start_cdpd: StartCdpd, http: aiohttp.ClientSession
) -> None:
    daemon = await start_cdpd()
    async with http.post(
        f"{daemon.url}/v1/track",
        json={"userId": "u1", "event": "Signed Up", "messageId": "m-1"},
        headers={"Authorization": basic_auth(WRITE_KEY)},
    ) as response:
        assert response.status == 200
        assert await response.json() == {"success": True}

    assert await daemon.stop() == 0

    parts = urlsplit(daemon.url)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), TIMEOUT_S)
