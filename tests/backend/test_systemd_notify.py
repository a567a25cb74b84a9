"""The sd_notify protocol (`asgi/systemd.py`): addresses, the watchdog interval, datagrams.
With a real server process: tests/cli/test_backend_run_lifecycle.py."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from parsec_server.backend.asgi.systemd import SystemdNotifier, notify_address, watchdog_interval


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@abstract-name", b"\0abstract-name"),
        ("", None),
        ("vsock:2:1234", None),
        ("relative/path", None),
    ],
)
def test_notify_address(value: str, address: str | bytes | None) -> None:
    assert notify_address(value) == address


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_the_period_for_our_pid(
    environ: dict[str, str], interval: float | None
) -> None:
    assert watchdog_interval(environ, pid=4242) == interval


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier.from_environment({"WATCHDOG_USEC": "1000000"}, pid=1)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("x") is False


def test_messages_are_newline_separated_assignments(receiver: socket.socket) -> None:
    notifier = SystemdNotifier.from_environment(
        {"NOTIFY_SOCKET": receiver.getsockname()}, pid=os.getpid()
    )
    assert notifier.ready("Serving on 0.0.0.0:6777")
    assert notifier.watchdog()
    assert notifier.stopping("Shutting down")
    notifier.close()
    assert [receiver.recv(4096) for _ in range(3)] == [
        b"READY=1\nSTATUS=Serving on 0.0.0.0:6777",
        b"WATCHDOG=1",
        b"STOPPING=1\nSTATUS=Shutting down",
    ]


def test_abstract_socket(tmp_path: Path) -> None:
    name = f"parsec-notify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.notify("READY=1")
        assert sock.recv(64) == b"READY=1"
        notifier.close()


def test_a_socket_gone_is_reported_once_and_never_raises(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody"))
    assert notifier.notify("READY=1") is False
    assert notifier.notify("WATCHDOG=1") is False
    notifier.close()
