"""Connections that do not finish their request: the header timeout, the per-address cap
on pending connections, file descriptor exhaustion (docs/hardening.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme

from parsec_server.backend.asgi import server as server_module
from parsec_server.backend.asgi.limits import PendingLimits
from tests.backend.common import assert_still_open, authenticated_ws, wait_until
from tests.fixtures import free_port
from tests.fixtures.raw import raw_connect
from tests.fixtures.servers import RunningServer, create_org, make_config, running_server

HEADER_TIMEOUT = 0.5  # the servers' of these tests
EARLY = HEADER_TIMEOUT * 0.9  # a close before this is not the timeout's
LATE = HEADER_TIMEOUT + 5  # generous: the machine may be busy
AT_ONCE = 2.0  # a close "at once" comes before this

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
UPGRADE_HEADERS = (
    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> list[PendingLimits]:
    """The `PendingLimits` of the servers started by the test, in order."""
    created: list[PendingLimits] = []

    class RecordedLimits(PendingLimits):
        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(server_module, "PendingLimits", RecordedLimits)
    return created


@contextlib.asynccontextmanager
async def limited_server(**overrides: Any) -> AsyncIterator[RunningServer]:
    config = make_config(**{"http_header_timeout": HEADER_TIMEOUT, **overrides})
    async with running_server(config) as server:
        yield server


@dataclass
class Raw:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    # When the connection was established (the server's deadline starts about then).
    opened_at: float = field(default_factory=time.monotonic)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_until_closed(self, within: float) -> tuple[bytes, float]:
        """Everything the server sends until it closes, and the seconds from the connection's
        opening to its close."""
        received = b""
        async with asyncio.timeout(within):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except (ConnectionError, ssl.SSLError):
                    break
                if not chunk:
                    break
                received += chunk
        return received, time.monotonic() - self.opened_at

    async def assert_open(self, during: float) -> None:
        with pytest.raises(TimeoutError):
            await self.read_until_closed(within=during)

    def close(self) -> None:
        self.writer.close()


_opened: list[Raw] = []


@pytest.fixture(autouse=True)
async def close_raw_connections() -> AsyncIterator[None]:
    yield
    for raw in _opened:
        raw.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await raw.writer.wait_closed()
    _opened.clear()


async def connect(
    server: RunningServer,
    data: bytes = b"",
    source: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
) -> Raw:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        server.addr.port,
        local_addr=(source, 0),
        ssl=tls,
        server_hostname="localhost" if tls else None,
    )
    raw = Raw(reader, writer)
    _opened.append(raw)
    if data:
        await raw.send(data)
    return raw


async def assert_closed_by_the_timeout(raw: Raw) -> None:
    received, elapsed = await raw.read_until_closed(within=LATE)
    assert received == b""
    assert elapsed >= EARLY


async def assert_closed_at_once(raw: Raw) -> None:
    received, _ = await raw.read_until_closed(within=AT_ONCE)
    assert received == b""


async def assert_served(raw: Raw) -> None:
    received, _ = await raw.read_until_closed(within=LATE)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")


# --- Header timeout -------------------------------------------------------------------------


PARTIAL_REQUESTS = {
    "nothing": b"",
    "request_line_only": b"GET / HTTP/1.1\r\n",
    "headers_without_the_end": b"GET / HTTP/1.1\r\nHost: localhost\r\n",
    "half_a_request_line": b"GET /redir",
    "empty_lines": b"\r\n\r\n",
    "one_empty_line": b"\r\n",
    "websocket_upgrade_without_the_end": UPGRADE_HEADERS,
}


@pytest.mark.parametrize("data", PARTIAL_REQUESTS.values(), ids=PARTIAL_REQUESTS.keys())
async def test_incomplete_request_is_closed_after_the_header_timeout(data: bytes) -> None:
    async with limited_server() as server:
        raw = await connect(server, data)
        await assert_closed_by_the_timeout(raw)


async def test_many_stalled_connections_are_all_closed() -> None:
    async with limited_server() as server:
        raws = [await connect(server, b"GET / HTTP/1.1\r\n") for _ in range(50)]
        await asyncio.gather(*(assert_closed_by_the_timeout(raw) for raw in raws))


async def test_empty_line_before_the_request_line_is_ignored() -> None:
    async with limited_server() as server:
        await assert_served(await connect(server, b"\r\n" + REQUEST))


async def test_request_sent_slowly_but_in_time_is_served() -> None:
    async with limited_server() as server:
        raw = await connect(server)
        for piece in (REQUEST[:5], REQUEST[5:20], REQUEST[20:]):
            await asyncio.sleep(HEADER_TIMEOUT / 5)
            await raw.send(piece)
        await assert_served(raw)


async def test_trickling_bytes_does_not_push_the_deadline_back() -> None:
    async with limited_server() as server:
        raw = await connect(server)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with contextlib.suppress(ConnectionError):
            for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                await raw.send(bytes([byte]))
                await asyncio.sleep(HEADER_TIMEOUT / 10)
                if raw.reader.at_eof():
                    break
        received, _ = await raw.read_until_closed(within=LATE)
        assert received == b""
        assert EARLY <= loop.time() - start < LATE


async def test_header_timeout_is_a_setting() -> None:
    async with limited_server(http_header_timeout=3 * HEADER_TIMEOUT) as server:
        raw = await connect(server, b"GET / HTTP/1.1\r\n")
        await raw.assert_open(during=2 * HEADER_TIMEOUT)
        received, _ = await raw.read_until_closed(within=LATE)
        assert received == b""


async def test_websocket_is_not_bound_by_the_header_timeout_once_upgraded(
    limits: list[PendingLimits],
) -> None:
    async with limited_server() as server:
        org = await create_org(server)
        ws = await authenticated_ws(org.alice)
        upgraded = await raw_connect(server.addr)  # its application handshake is not done
        await upgraded.recv()  # the challenge
        assert limits[0].pending_count() == 0
        await asyncio.sleep(2 * HEADER_TIMEOUT)
        await assert_still_open(ws)
        pong = await upgraded.ping()
        await asyncio.wait_for(pong, LATE)  # answered: still open
        await ws.close()
        await upgraded.close()


async def test_answered_requests_are_no_longer_pending(limits: list[PendingLimits]) -> None:
    async with limited_server() as server:
        for _ in range(5):
            await assert_served(await connect(server, REQUEST))
        refused = await connect(server, b"GET / HTTP/9\r\n\r\n")  # answered 400, closed
        await refused.read_until_closed(within=LATE)
        await wait_until(lambda: limits[0].pending_count() == 0)


# --- TLS ----------------------------------------------------------------------------------


@dataclass
class Tls:
    client: ssl.SSLContext
    certfile: Path
    keyfile: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Tls(client, certfile, keyfile)


@contextlib.asynccontextmanager
async def tls_server(tls: Tls) -> AsyncIterator[RunningServer]:
    async with limited_server(ssl_certfile=tls.certfile, ssl_keyfile=tls.keyfile) as server:
        yield server


async def test_tls_request_is_served(tls: Tls) -> None:
    async with tls_server(tls) as server:
        await assert_served(await connect(server, REQUEST, tls=tls.client))


async def test_tls_incomplete_request_is_closed_after_the_header_timeout(tls: Tls) -> None:
    async with tls_server(tls) as server:
        raw = await connect(server, b"GET / HTTP/1.1\r\n", tls=tls.client)
        await assert_closed_by_the_timeout(raw)


async def test_tls_handshake_not_started_is_closed_after_the_header_timeout(tls: Tls) -> None:
    async with tls_server(tls) as server:
        raw = await connect(server)  # plain TCP: no ClientHello ever comes
        await assert_closed_by_the_timeout(raw)


# --- Pending connections per peer address ---------------------------------------------------


def warnings_of(logs: list[MutableMapping[str, Any]], text: str) -> list[MutableMapping[str, Any]]:
    return [log for log in logs if log["log_level"] == "warning" and text in log["event"]]


async def test_connections_beyond_the_cap_are_closed_at_once(
    limits: list[PendingLimits],
) -> None:
    async with limited_server(http_header_timeout=60, max_pending_connections_per_peer=3) as server:
        stalled = [await connect(server, b"GET / HTTP/1.1\r\n") for _ in range(3)]
        await wait_until(lambda: limits[0].pending_count("127.0.0.1") == 3)
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                await assert_closed_at_once(await connect(server, REQUEST))
        [warning] = warnings_of(logs, "Too many pending connections")
        assert (warning["peer"], warning["max_pending_connections_per_peer"]) == ("127.0.0.1", 3)
        assert limits[0].pending_count("127.0.0.1") == 3

        # Another address has its own count.
        await assert_served(await connect(server, REQUEST, source="127.0.0.2"))

        # One stalled connection goes away: room for one more.
        stalled.pop().close()
        await wait_until(lambda: limits[0].pending_count("127.0.0.1") == 2)
        await assert_served(await connect(server, REQUEST))
        for raw in stalled:
            raw.close()


async def test_refusals_are_logged_again_after_a_second(limits: list[PendingLimits]) -> None:
    async with limited_server(http_header_timeout=60, max_pending_connections_per_peer=1) as server:
        stalled = await connect(server)
        await wait_until(lambda: limits[0].pending_count() == 1)
        with structlog.testing.capture_logs() as logs:
            await assert_closed_at_once(await connect(server))
            await assert_closed_at_once(await connect(server))
            await asyncio.sleep(1.1)
            await assert_closed_at_once(await connect(server))
        assert len(warnings_of(logs, "Too many pending connections")) == 2
        stalled.close()


async def test_upgraded_websockets_do_not_count(limits: list[PendingLimits]) -> None:
    async with limited_server(http_header_timeout=60, max_pending_connections_per_peer=2) as server:
        org = await create_org(server)
        sessions = [await authenticated_ws(org.alice) for _ in range(4)]
        assert limits[0].pending_count() == 0
        stalled = [await connect(server, UPGRADE_HEADERS) for _ in range(2)]
        await wait_until(lambda: limits[0].pending_count() == 2)
        await assert_closed_at_once(await connect(server, UPGRADE_HEADERS))
        for ws in sessions:
            await assert_still_open(ws)
            await ws.close()
        for raw in stalled:
            raw.close()


async def test_zero_means_no_cap(limits: list[PendingLimits]) -> None:
    async with limited_server(max_pending_connections_per_peer=0) as server:
        raws = [await connect(server, b"GET / HTTP/1.1\r\n") for _ in range(30)]
        await asyncio.gather(*(assert_closed_by_the_timeout(raw) for raw in raws))


# --- File descriptors -------------------------------------------------------------------------


async def test_connection_given_one_of_the_last_descriptors_is_warned_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_module, "descriptor_warning_floor", lambda: 0)
    async with limited_server() as server:
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                await assert_served(await connect(server, REQUEST))
        [warning] = warnings_of(logs, "File descriptors nearly exhausted")
        assert warning["descriptor"] > 0


RUN_WITH_FEW_DESCRIPTORS = """
import resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
from parsec_server.cli.main import cli
cli(sys.argv[2:])
"""
DESCRIPTOR_LIMIT = 96


@pytest.fixture
def few_descriptors_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`parsec backend run --dev` (uvloop, as in production) limited to DESCRIPTOR_LIMIT open
    files; stalled connections stay for 60 s and are not capped."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARSEC_")}
    env["TMPDIR"] = str(tmp_path)
    args = ["backend", "run", "--dev", "-P", str(port), "--http-header-timeout", "60"]
    args += ["--max-pending-connections-per-peer", "0"]
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_WITH_FEW_DESCRIPTORS, str(DESCRIPTOR_LIMIT), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start: {process.communicate()[1]}")
                time.sleep(0.05)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _closed_by_server(sockets: list[socket.socket]) -> list[socket.socket]:
    time.sleep(0.5)
    readable, _, _ = select.select(sockets, [], [], 0)
    closed = []
    for sock in readable:
        try:
            if sock.recv(1) == b"":
                closed.append(sock)
        except OSError:  # reset
            closed.append(sock)
    return closed


def test_running_out_of_descriptors_is_logged_once_a_second_and_recovers(
    few_descriptors_server: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = few_descriptors_server
    start = time.monotonic()
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2 * DESCRIPTOR_LIMIT)]
    # Keep knocking for a while: every attempt meets the exhausted table.
    for _ in range(20):
        held.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.1)
    refused = _closed_by_server(held)
    assert refused, "the server never ran out of descriptors"
    assert len(refused) < len(held)
    for sock in held:
        sock.close()
    elapsed = time.monotonic() - start

    # Once the descriptors are back, new connections are served.
    deadline = time.monotonic() + 10
    while True:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(REQUEST)
            try:
                answer = sock.recv(100)
            except OSError:
                answer = b""
        if answer.startswith(b"HTTP/1.1 200 OK") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.startswith(b"HTTP/1.1 200 OK")

    process.terminate()
    _, stderr = process.communicate(timeout=10)
    lines = [line for line in stderr.splitlines() if "descriptor" in line.lower()]
    assert lines, stderr
    assert len(lines) <= elapsed + 1, stderr
    assert "Traceback" not in stderr
