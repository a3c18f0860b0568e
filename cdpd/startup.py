"""What start-up claims before it touches the outbox: the data folder's lock and the listening
socket. Either failing is one line for the operator (`StartupError`), never a traceback."""

from __future__ import annotations

import errno
import socket

from cdpd.config import ServerConfig


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line to show."""


def bind(server: ServerConfig, listen: str | None = None) -> socket.socket:
    """A listening socket on `listen` (default `server.listen`), bound before the outbox is
    opened, so that a second daemon on the same port stops before it does any harm."""
    listen = listen or server.listen
    host, port = _host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {listen}: the port is in use") from None
        raise StartupError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
