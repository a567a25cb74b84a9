"""systemd's service notifications (the `sd_notify(3)` protocol), without libsystemd.

When systemd starts a `Type=notify` service, it sets `NOTIFY_SOCKET` to the address of a
unix datagram socket (a path, or `@name` for the abstract namespace); the service sends it
newline-separated `KEY=VALUE` datagrams: `READY=1` once it serves, `STOPPING=1` when it
starts shutting down, `STATUS=...` for `systemctl status`, and `WATCHDOG=1` regularly when
the unit has `WatchdogSec=` (systemd then sets `WATCHDOG_USEC`, and `WATCHDOG_PID` to the
process expected to ping). Without `NOTIFY_SOCKET` nothing is sent.

Who sends what (docs/deployment.md): a single server process sends everything itself;
with `--workers`, the parent process (systemd's main process) sends `READY=1` once every
worker listens, and pings the watchdog only while every worker's event loop proves alive.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

logger = structlog.get_logger("parsec.systemd")


def notify_address(value: str) -> str | bytes | None:
    """The socket address of a `NOTIFY_SOCKET` value: a path, or an abstract name
    (`@name`, NUL first); None for what we cannot use (empty, `vsock:`...)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two `WATCHDOG=1`: half of `WATCHDOG_USEC` (as systemd advises),
    when it is set and `WATCHDOG_PID` is unset or names `pid`; None otherwise."""
    usec = environ.get("WATCHDOG_USEC", "")
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2


class SystemdNotifier:
    """Sends notifications to one `NOTIFY_SOCKET` (or nothing, when there is none)."""

    def __init__(self, address: str | bytes | None, watchdog_interval: float | None = None) -> None:
        self._address = address
        self.watchdog_interval = watchdog_interval if address is not None else None
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> SystemdNotifier:
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = environ.get("NOTIFY_SOCKET", "")
        address = notify_address(raw) if raw else None
        if raw and address is None:
            logger.warning("NOTIFY_SOCKET not supported, no notification sent", value=raw)
        return cls(address, watchdog_interval(environ, pid))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (`KEY=VALUE` each) in one datagram; False if it could not be sent
        (logged once: a notification never stops the server)."""
        if self._address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(data, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                logger.warning("cannot notify systemd", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
