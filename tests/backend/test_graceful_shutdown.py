"""Graceful shutdown, in process (`Server.stop`, what SIGTERM runs): connections are closed
with 1001 (going away) as soon as they are not processing a request; waits are abandoned
at once; a request in progress gets its reply first, unless the grace period ends before.

Signals, exit status and a whole server under load: tests/cli/test_backend_run_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
import websockets
from websockets.asyncio.client import ClientConnection as WsClient

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID, DateTime
from parsec_server.backend.app import BackendApp, backend_app_factory
from parsec_server.backend.asgi.app import BackendASGIApp
from parsec_server.backend.asgi.server import Server, make_server
from parsec_server.backend.config import BackendConfig
from parsec_server.client.connection import BackendConnection, BackendConnectionError
from parsec_server.client.invite import new_device_invitation
from parsec_server.client.realm import create_realm
from tests.fixtures.servers import Organization, RunningServer, create_org, make_config


@dataclass
class Stoppable:
    server: Server
    app: BackendApp
    addr: BackendAddr

    @property
    def running(self) -> RunningServer:
        return RunningServer(app=self.app, addr=self.addr)


@contextlib.asynccontextmanager
async def stoppable_server(config: BackendConfig) -> AsyncIterator[Stoppable]:
    async with backend_app_factory(config) as backend:
        server = make_server(config, BackendASGIApp(backend))
        sock = socket.create_server(("127.0.0.1", 0))
        await server.start(sock)
        try:
            yield Stoppable(server, backend, BackendAddr("127.0.0.1", sock.getsockname()[1], False))
        finally:
            if not server.lifecycle.draining:
                await server.stop(1.0)


def ws_of(conn: BackendConnection) -> WsClient:
    ws: WsClient = conn._ws
    return ws


async def close_code(conn: BackendConnection) -> int | None:
    """The close code the server sent (the connection must be closing or closed)."""
    ws = ws_of(conn)
    async with asyncio.timeout(5):
        await ws.wait_closed()
    return ws.close_code


async def timed_stop(server: Server, grace: float) -> float:
    started = time.monotonic()
    await server.stop(grace)
    return time.monotonic() - started


async def vlob_create(conn: BackendConnection, realm_id: ID, vlob_id: ID) -> dict[str, Any]:
    return await conn.cmd(
        "vlob_create",
        realm_id=realm_id,
        encryption_revision=1,
        vlob_id=vlob_id,
        timestamp=DateTime.now(),
        blob=b"data",
    )


@contextlib.asynccontextmanager
async def realm_table_locked(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Every vlob write waits while the block runs (the `realm` row update)."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE realm IN ACCESS EXCLUSIVE MODE")
            yield conn
    finally:
        await conn.close()


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.01)


@pytest.fixture
async def memory_server() -> AsyncIterator[Stoppable]:
    async with stoppable_server(make_config()) as server:
        yield server


@pytest.fixture
async def pg_server(migrated_postgresql_url: str) -> AsyncIterator[Stoppable]:
    async with stoppable_server(make_config(migrated_postgresql_url)) as server:
        yield server


async def test_idle_connection_is_closed_with_1001(memory_server: Stoppable) -> None:
    org = await create_org(memory_server.running)
    conn = await org.alice.connect()
    assert await conn.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}

    assert await timed_stop(memory_server.server, grace=30) < 2

    assert await close_code(conn) == 1001
    with pytest.raises(BackendConnectionError):
        await conn.cmd("ping", ping="x")


async def test_waiting_events_listen_is_abandoned_at_once(memory_server: Stoppable) -> None:
    org = await create_org(memory_server.running)
    conn = await org.alice.connect()
    assert await conn.cmd("events_subscribe") == {"status": "ok"}
    listen = asyncio.create_task(conn.cmd("events_listen", wait=True))
    await asyncio.sleep(0.2)  # the events_listen is waiting

    assert await timed_stop(memory_server.server, grace=30) < 2

    with pytest.raises(BackendConnectionError):
        await listen
    assert await close_code(conn) == 1001


async def test_rendezvous_step_waiting_for_its_peer_is_abandoned_at_once(
    memory_server: Stoppable,
) -> None:
    org: Organization = await create_org(memory_server.running)
    conn = await org.alice.connect()
    token = await new_device_invitation(conn)
    step = asyncio.create_task(
        conn.cmd("invite_1_greeter_wait_peer", token=token, greeter_public_key=b"G" * 32)
    )
    await asyncio.sleep(0.2)  # waiting for the claimer

    assert await timed_stop(memory_server.server, grace=30) < 2

    with pytest.raises(BackendConnectionError):
        await step
    assert await close_code(conn) == 1001


async def test_handshake_waiting_for_the_answer_is_closed_with_1001(
    memory_server: Stoppable,
) -> None:
    url = f"ws://127.0.0.1:{memory_server.addr.port}/ws"
    async with websockets.connect(url) as ws:
        await ws.recv()  # the challenge; no answer
        assert await timed_stop(memory_server.server, grace=30) < 2
        await ws.wait_closed()
        assert ws.close_code == 1001


async def test_request_in_progress_gets_its_reply_then_1001(
    pg_server: Stoppable, migrated_postgresql_url: str
) -> None:
    org = await create_org(pg_server.running)
    conn = await org.alice.connect()
    idle = await org.bob.connect()
    realm_id = await create_realm(conn, org.alice)
    vlob_id = ID.new()
    async with realm_table_locked(migrated_postgresql_url):
        write = asyncio.create_task(vlob_create(conn, realm_id, vlob_id))
        await asyncio.sleep(0.3)  # the write waits for the lock
        stop = asyncio.create_task(timed_stop(pg_server.server, grace=30))
        # The idle connection goes at once; the busy one waits for its request.
        assert await close_code(idle) == 1001
        await asyncio.sleep(0.3)
        assert not write.done() and not stop.done()
    assert await write == {"status": "ok"}
    assert await close_code(conn) == 1001
    assert await stop < 5
    # The write is there for a server started afterwards.
    async with stoppable_server(make_config(migrated_postgresql_url)) as again:
        alice = dataclasses.replace(org.alice, backend_addr=again.addr)
        async with await alice.connect() as reader:
            rep = await reader.cmd("vlob_read", encryption_revision=1, vlob_id=vlob_id)
        assert rep["status"] == "ok" and rep["blob"] == b"data"


async def test_request_still_in_progress_at_the_end_of_the_grace_is_abandoned(
    pg_server: Stoppable, migrated_postgresql_url: str
) -> None:
    org = await create_org(pg_server.running)
    conn = await org.alice.connect()
    realm_id = await create_realm(conn, org.alice)
    vlob_id = ID.new()
    async with realm_table_locked(migrated_postgresql_url):
        write = asyncio.create_task(vlob_create(conn, realm_id, vlob_id))
        await asyncio.sleep(0.3)
        elapsed = await timed_stop(pg_server.server, grace=0.5)
        assert 0.5 <= elapsed < 3
        with pytest.raises(BackendConnectionError):
            await write
        assert await close_code(conn) == 1001
    # Abandoned: its transaction was rolled back.
    check = await asyncpg.connect(migrated_postgresql_url)
    try:
        count = await check.fetchval("SELECT count(*) FROM vlob_atom WHERE vlob_id = $1", vlob_id)
    finally:
        await check.close()
    assert count == 0


async def test_while_draining_readyz_is_503_and_new_websockets_get_1001(
    pg_server: Stoppable, migrated_postgresql_url: str
) -> None:
    org = await create_org(pg_server.running)
    conn = await org.alice.connect()
    realm_id = await create_realm(conn, org.alice)
    port = pg_server.addr.port
    # Opened before the shutdown (the listener closes at once), used during it.
    http_sock = socket.create_connection(("127.0.0.1", port))
    ws_sock = socket.create_connection(("127.0.0.1", port))
    async with realm_table_locked(migrated_postgresql_url):
        write = asyncio.create_task(vlob_create(conn, realm_id, ID.new()))
        await asyncio.sleep(0.3)
        stop = asyncio.create_task(pg_server.server.stop(30))
        await wait_until(lambda: pg_server.server.lifecycle.draining)
        # Nobody new gets in.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

        reader, writer = await asyncio.open_connection(sock=http_sock)
        writer.write(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert answer.endswith(b'{"status":"not_ready","reason":"shutting down","checks":{}}')

        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", sock=ws_sock) as ws:
            await ws.wait_closed()
            assert ws.close_code == 1001
        assert not stop.done()
    assert await write == {"status": "ok"}
    await stop
