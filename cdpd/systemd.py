"""The sd_notify protocol: READY, STOPPING and WATCHDOG datagrams to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger()


class Notifier:
    """Sends state changes to systemd; does nothing when not started by a Type=notify unit."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading "@" and addressed with a NUL byte.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval_s = _watchdog_interval_s(env)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def reloading(self) -> None:
        # systemd matches the reload to this message by the monotonic time it carries.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def ready(self) -> None:
        self._send("READY=1\nSTATUS=accepting messages")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=draining")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def _send(self, state: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Half of WatchdogSec, as sd_watchdog_enabled(3) recommends; None when not asked for."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000
