"""`parsec backend run` as a supervisor runs it: SIGTERM under load (exit 0 in time, every
acknowledged write kept, clients told 1001), a second signal, `--workers`, and systemd's
notifications (`READY=1`, `STOPPING=1`, `WATCHDOG=1`) on a socket the test listens on.

In-process details of the shutdown: tests/backend/test_graceful_shutdown.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID, DateTime
from parsec_server.client.connection import BackendConnection, BackendConnectionError
from parsec_server.client.realm import create_realm
from tests.fixtures import free_port
from tests.fixtures.servers import (
    ADMINISTRATION_TOKEN,
    Organization,
    RunningServer,
    create_org,
    make_config,
    running_server,
)

PARSEC = str(Path(sys.executable).parent / "parsec")
SHUTDOWN_TIMEOUT = 10.0


# --- systemd's side of NOTIFY_SOCKET ---------------------------------------------------------


@dataclass
class Notification:
    fields: dict[str, str]
    pid: int  # the sender (SCM_CREDENTIALS, as systemd reads it)


class NotifySocket:
    """A unix datagram socket receiving sd_notify messages, with their sender's pid."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET: a path, or `@name`
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self._sock.bind(bind_to)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[Notification] = []

    def receive(self, timeout: float) -> Notification | None:
        self._sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        notification = Notification(fields, pid)
        self.received.append(notification)
        return notification

    def wait_for(self, field: str, timeout: float = 30.0) -> Notification:
        """The next notification holding `field` (`KEY=VALUE`)."""
        name, _, value = field.partition("=")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            notification = self.receive(left)
            if notification is not None and notification.fields.get(name) == value:
                return notification
        raise AssertionError(f"no {field} within {timeout} s: {self.received}")

    def collect(self, seconds: float) -> list[Notification]:
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            notification = self.receive(left)
            if notification is not None:
                got.append(notification)
        return got

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify"))
    yield sock
    sock.close()


# --- The server process ------------------------------------------------------------------------


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    children: list[int] = field(default_factory=list)
    # Its output, read as it comes (as a supervisor does): a full pipe would block the
    # server's logging, request lines at INFO included.
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def addr(self) -> BackendAddr:
        return BackendAddr("127.0.0.1", self.port, False)

    def signal(self, signum: int) -> float:
        self.process.send_signal(signum)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        returncode = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return returncode


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PARSEC_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env.update(extra or {})
    return env


@contextlib.contextmanager
def server_process(
    db_url: str, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[ServerProcess]:
    port = port or free_port()
    variables = {
        "PARSEC_DB": db_url,
        "PARSEC_BLOCKSTORE": "POSTGRESQL",
        "PARSEC_ADMINISTRATION_TOKEN": ADMINISTRATION_TOKEN,
        "PARSEC_BACKEND_ADDR": f"parsec://127.0.0.1:{port}?no_ssl=true",
        "PARSEC_EMAIL_HOST": "MOCKED",
        "PARSEC_PORT": str(port),
        "PARSEC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        "PARSEC_DB_MIN_CONNECTIONS": "1",
        "PARSEC_LOG_LEVEL": "INFO",
        **(env or {}),
    }
    process = subprocess.Popen(
        [PARSEC, "backend", "run", *args],
        env=server_env(variables),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = ServerProcess(process, port)
    try:
        yield server
    finally:
        if process.poll() is None:
            for pid in child_pids(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
        server.wait(timeout=30)


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == pid:
                children.append(int(entry.name))
    return children


def process_exists(pid: int) -> bool:
    """Running, or exited but not reaped yet by a parent still there (a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_ready(server: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            server.wait(timeout=10)
            raise AssertionError(f"server exited: {server.output}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("server not ready in time")
        time.sleep(0.1)


def port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


async def org_on(addr: BackendAddr) -> Organization:
    # create_org only needs the server's address (its app lives in the other process).
    return await create_org(RunningServer(app=cast(Any, None), addr=addr))


async def close_code(conn: BackendConnection) -> int | None:
    ws = conn._ws
    async with asyncio.timeout(10):
        await ws.wait_closed()
    code: int | None = ws.close_code
    return code


@contextlib.asynccontextmanager
async def realm_table_locked(db_url: str) -> AsyncIterator[None]:
    """Vlob writes wait while the block runs."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE realm IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def vlob_create(conn: BackendConnection, realm_id: ID, vlob_id: ID, blob: bytes) -> Any:
    return await conn.cmd(
        "vlob_create",
        realm_id=realm_id,
        encryption_revision=1,
        vlob_id=vlob_id,
        timestamp=DateTime.now(),
        blob=blob,
    )


# --- Under load --------------------------------------------------------------------------------


@dataclass
class Writer:
    conn: BackendConnection
    realm_id: ID
    acknowledged: list[tuple[ID, int, bytes]] = field(default_factory=list)
    close_code: int | None = None

    async def run(self) -> None:
        """Create and update vlobs until the connection is closed."""
        try:
            while True:
                vlob_id = ID.new()
                blob = os.urandom(64)
                rep = await vlob_create(self.conn, self.realm_id, vlob_id, blob)
                assert rep == {"status": "ok"}, rep
                self.acknowledged.append((vlob_id, 1, blob))
                for version in (2, 3):
                    blob = os.urandom(64)
                    rep = await self.conn.cmd(
                        "vlob_update",
                        encryption_revision=1,
                        vlob_id=vlob_id,
                        timestamp=DateTime.now(),
                        version=version,
                        blob=blob,
                    )
                    assert rep == {"status": "ok"}, rep
                    self.acknowledged.append((vlob_id, version, blob))
        except BackendConnectionError:
            self.close_code = await close_code(self.conn)


async def test_sigterm_under_load_exits_0_in_time_keeping_every_acknowledged_write(
    migrated_postgresql_url: str, notify_socket: NotifySocket
) -> None:
    with server_process(
        migrated_postgresql_url, env={"NOTIFY_SOCKET": notify_socket.address}
    ) as server:
        ready = await asyncio.to_thread(notify_socket.wait_for, "READY=1")
        assert ready.pid == server.process.pid
        org = await org_on(server.addr)
        writers = []
        for _ in range(4):
            conn = await org.alice.connect()
            writers.append(Writer(conn, await create_realm(conn, org.alice)))
        # An idle listener: nothing is shared with bob, its events_listen just waits.
        listener = await org.bob.connect()
        assert await listener.cmd("events_subscribe") == {"status": "ok"}
        listening = asyncio.create_task(listener.cmd("events_listen", wait=True))
        tasks = [asyncio.create_task(writer.run()) for writer in writers]
        await asyncio.sleep(1.5)
        assert not any(task.done() for task in tasks)

        signalled_at = server.signal(signal.SIGTERM)
        stopping = await asyncio.to_thread(notify_socket.wait_for, "STOPPING=1", 5)
        assert stopping.pid == server.process.pid
        returncode = await asyncio.to_thread(server.wait, SHUTDOWN_TIMEOUT + 5)
        elapsed = time.monotonic() - signalled_at

        assert returncode == 0, server.output
        assert elapsed < SHUTDOWN_TIMEOUT
        assert elapsed < 5  # nothing waits: the idle events_listen did not hold it back
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)
        assert [writer.close_code for writer in writers] == [1001] * 4
        with pytest.raises(BackendConnectionError):
            await listening
        assert await close_code(listener) == 1001
        assert "Traceback" not in server.output

    acknowledged = [write for writer in writers for write in writer.acknowledged]
    assert len(acknowledged) > 20
    async with running_server(make_config(migrated_postgresql_url)) as again:
        alice = dataclasses.replace(org.alice, backend_addr=again.addr)
        async with await alice.connect() as reader:
            for vlob_id, version, blob in acknowledged:
                rep = await reader.cmd(
                    "vlob_read", encryption_revision=1, vlob_id=vlob_id, version=version
                )
                assert (rep["status"], rep["blob"]) == ("ok", blob)


async def test_request_in_progress_gets_its_reply_before_the_exit(
    migrated_postgresql_url: str,
) -> None:
    with server_process(migrated_postgresql_url) as server:
        await asyncio.to_thread(wait_ready, server)
        org = await org_on(server.addr)
        conn = await org.alice.connect()
        realm_id = await create_realm(conn, org.alice)
        readyz = socket.create_connection(("127.0.0.1", server.port))  # opened before
        vlob_id = ID.new()
        async with realm_table_locked(migrated_postgresql_url):
            write = asyncio.create_task(vlob_create(conn, realm_id, vlob_id, b"late"))
            await asyncio.sleep(0.5)
            server.signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert server.process.poll() is None  # waiting for the write
            assert await asyncio.to_thread(port_is_closed, server.port)  # refused at once
            readyz.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert readyz.recv(64).startswith(b"HTTP/1.1 503 ")
            readyz.close()
            assert not write.done()
        assert await write == {"status": "ok"}
        assert await close_code(conn) == 1001
        assert await asyncio.to_thread(server.wait, SHUTDOWN_TIMEOUT) == 0, server.output


async def test_second_signal_exits_at_once(migrated_postgresql_url: str) -> None:
    with server_process(migrated_postgresql_url) as server:
        await asyncio.to_thread(wait_ready, server)
        org = await org_on(server.addr)
        conn = await org.alice.connect()
        realm_id = await create_realm(conn, org.alice)
        async with realm_table_locked(migrated_postgresql_url):
            write = asyncio.create_task(vlob_create(conn, realm_id, ID.new(), b"never"))
            await asyncio.sleep(0.5)
            server.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert server.process.poll() is None  # the write holds the shutdown
            signalled_at = server.signal(signal.SIGINT)
            returncode = await asyncio.to_thread(server.wait, 5)
            assert time.monotonic() - signalled_at < 2
            assert returncode == 128 + signal.SIGINT
            with pytest.raises(BackendConnectionError):
                await write
        assert "Second signal: exiting at once" in server.output


async def test_signal_during_start_up_exits_0(tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/parsec"
    with server_process(dead, "--db-first-tries-number", "0") as server:
        await asyncio.sleep(2)  # retrying to reach the database
        assert server.process.poll() is None
        signalled_at = server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 10) == 0, server.output
        assert time.monotonic() - signalled_at < 3


# --- systemd --------------------------------------------------------------------------------


def test_notifications_reach_an_abstract_socket_and_the_watchdog_is_pinged(
    migrated_postgresql_url: str,
) -> None:
    sock = NotifySocket(f"@parsec-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        env = {"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "300000"}
        with server_process(migrated_postgresql_url, env=env) as server:
            ready = sock.wait_for("READY=1")
            assert ready.fields["STATUS"].startswith("Serving on ")
            pings = [n for n in sock.collect(1.2) if n.fields == {"WATCHDOG": "1"}]
            assert 4 <= len(pings) <= 12  # every 0.15 s
            assert {n.pid for n in pings} == {server.process.pid}
            server.signal(signal.SIGTERM)
            assert sock.wait_for("STOPPING=1", 5).fields["STATUS"] == "Shutting down"
            assert server.wait(SHUTDOWN_TIMEOUT) == 0
    finally:
        sock.close()


def test_watchdog_for_another_pid_is_not_pinged(
    migrated_postgresql_url: str, notify_socket: NotifySocket
) -> None:
    env = {
        "NOTIFY_SOCKET": notify_socket.address,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": "1",
    }
    with server_process(migrated_postgresql_url, env=env) as server:
        notify_socket.wait_for("READY=1")
        assert [n for n in notify_socket.collect(1.0) if "WATCHDOG" in n.fields] == []
        server.signal(signal.SIGTERM)
        assert server.wait(SHUTDOWN_TIMEOUT) == 0


# --- --workers ----------------------------------------------------------------------------------


async def test_workers_ready_once_all_listen_then_stop_gracefully(
    migrated_postgresql_url: str, notify_socket: NotifySocket
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.address}
    with server_process(migrated_postgresql_url, "--workers", "3", env=env) as server:
        ready = await asyncio.to_thread(notify_socket.wait_for, "READY=1")
        # From the parent (systemd's main process), once: the workers do not notify.
        assert ready.pid == server.process.pid
        assert ready.fields["STATUS"].endswith("with 3 workers")
        workers = child_pids(server.process.pid)
        assert len(workers) == 3
        org = await org_on(server.addr)
        connections = [await org.alice.connect() for _ in range(6)]
        listener = await org.bob.connect()
        assert await listener.cmd("events_subscribe") == {"status": "ok"}
        listening = asyncio.create_task(listener.cmd("events_listen", wait=True))
        await asyncio.sleep(0.3)

        signalled_at = server.signal(signal.SIGTERM)
        assert (await asyncio.to_thread(notify_socket.wait_for, "STOPPING=1", 5)).pid == (
            server.process.pid
        )
        assert await asyncio.to_thread(server.wait, SHUTDOWN_TIMEOUT + 5) == 0, server.output
        assert time.monotonic() - signalled_at < 5
        assert [await close_code(conn) for conn in connections] == [1001] * 6
        with pytest.raises(BackendConnectionError):
            await listening
        assert await close_code(listener) == 1001
        assert [n for n in notify_socket.received if "READY" in n.fields] == [ready]
    assert port_is_closed(server.port)
    assert [pid for pid in workers if process_exists(pid)] == []


async def test_workers_second_signal_kills_them_at_once(migrated_postgresql_url: str) -> None:
    with server_process(migrated_postgresql_url, "--workers", "2") as server:
        await asyncio.to_thread(wait_ready, server)
        workers = child_pids(server.process.pid)
        org = await org_on(server.addr)
        conn = await org.alice.connect()
        realm_id = await create_realm(conn, org.alice)
        async with realm_table_locked(migrated_postgresql_url):
            write = asyncio.create_task(vlob_create(conn, realm_id, ID.new(), b"never"))
            await asyncio.sleep(0.5)
            server.signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert server.process.poll() is None  # a worker waits for the write
            # No worker accepts any more, and new connections are refused, not queued.
            assert await asyncio.to_thread(port_is_closed, server.port)
            signalled_at = server.signal(signal.SIGTERM)
            returncode = await asyncio.to_thread(server.wait, 5)
            assert time.monotonic() - signalled_at < 2
            assert returncode == 128 + signal.SIGTERM
            with pytest.raises(BackendConnectionError):
                await write
    assert port_is_closed(server.port)
    await asyncio.sleep(0.2)
    assert [pid for pid in workers if process_exists(pid)] == []


def test_workers_watchdog_pings_stop_while_a_worker_is_stuck(
    migrated_postgresql_url: str, notify_socket: NotifySocket
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000"}
    with server_process(migrated_postgresql_url, "--workers", "2", env=env) as server:
        notify_socket.wait_for("READY=1")
        pings = [n for n in notify_socket.collect(1.6) if "WATCHDOG" in n.fields]
        assert len(pings) >= 2  # every 0.5 s
        assert {n.pid for n in pings} == {server.process.pid}
        stuck = child_pids(server.process.pid)[0]
        os.kill(stuck, signal.SIGSTOP)  # its event loop stops, as a hung one would
        try:
            notify_socket.collect(1.2)  # the last pings while its report is still fresh
            assert [n for n in notify_socket.collect(1.5) if "WATCHDOG" in n.fields] == []
        finally:
            os.kill(stuck, signal.SIGCONT)
        assert [n for n in notify_socket.collect(1.5) if "WATCHDOG" in n.fields] != []
        server.signal(signal.SIGTERM)
        assert server.wait(SHUTDOWN_TIMEOUT + 5) == 0, server.output


async def test_worker_crash_stops_the_others_and_fails(migrated_postgresql_url: str) -> None:
    with server_process(migrated_postgresql_url, "--workers", "2") as server:
        await asyncio.to_thread(wait_ready, server)
        first, second = child_pids(server.process.pid)
        os.kill(first, signal.SIGKILL)
        returncode = await asyncio.to_thread(server.wait, SHUTDOWN_TIMEOUT + 5)
    assert returncode == 1
    assert "exited unexpectedly" in server.output
    assert not process_exists(second)
