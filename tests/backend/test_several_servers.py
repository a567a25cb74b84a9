"""Several server processes on one PostgreSQL database behave as one server."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import RealmRole, UserProfile
from parsec_server.client.certificates import revoked_user_certificate
from parsec_server.client.connection import (
    BackendConnection,
    BackendConnectionError,
    HandshakeRefused,
)
from parsec_server.client.organization import (
    admin_command,
    bootstrap_organization,
    create_organization,
)
from parsec_server.client.realm import create_realm, share
from parsec_server.client.user import create_user
from tests.fixtures import free_port
from tests.fixtures.servers import (
    ADMINISTRATION_TOKEN,
    RunningServer,
    make_config,
    new_organization_id,
    running_server,
)


@pytest.fixture
async def two_servers(migrated_postgresql_url: str) -> AsyncIterator[tuple[RunningServer, ...]]:
    async with (
        running_server(make_config(migrated_postgresql_url)) as a,
        running_server(make_config(migrated_postgresql_url)) as b,
    ):
        yield a, b


async def assert_closed_by_the_server(conn: BackendConnection) -> None:
    """The connection gets closed within seconds (pinging until it is)."""
    try:
        with pytest.raises(BackendConnectionError):
            async with asyncio.timeout(10):
                while True:
                    await conn.cmd("ping", ping="still there?")
                    await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_revocation_on_one_server_closes_connections_on_the_other(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_servers
    organization_id = new_organization_id()
    token = await create_organization(a.addr, ADMINISTRATION_TOKEN, organization_id)
    alice = await bootstrap_organization(b.addr, organization_id, token, None, None)
    async with await alice.connect() as conn_a:
        bob = await create_user(conn_a, alice, "bob", "pc", None, UserProfile.STANDARD)
        bob_on_b = await dataclasses.replace(bob, backend_addr=b.addr).connect()
        cert = revoked_user_certificate(alice.signing_key, alice.device_id, DateTime.now(), "bob")
        rep = await conn_a.cmd("user_revoke", revoked_user_certificate=cert)
        assert rep == {"status": "ok"}
        await assert_closed_by_the_server(bob_on_b)


async def test_expiration_set_on_one_server_closes_connections_on_the_other(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_servers
    organization_id = new_organization_id()
    token = await create_organization(a.addr, ADMINISTRATION_TOKEN, organization_id)
    alice = await bootstrap_organization(b.addr, organization_id, token, None, None)
    async with await alice.connect() as conn_b:
        rep = await admin_command(
            a.addr,
            ADMINISTRATION_TOKEN,
            "organization_update",
            organization_id=organization_id,
            expiration_date=DateTime.now().add(-10),
        )
        assert rep == {"status": "ok"}
        await assert_closed_by_the_server(conn_b)


async def test_pinged_event_crosses_servers(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_servers
    organization_id = new_organization_id()
    token = await create_organization(a.addr, ADMINISTRATION_TOKEN, organization_id)
    alice = await bootstrap_organization(a.addr, organization_id, token, None, None)
    async with await alice.connect() as conn_a:
        bob = await create_user(conn_a, alice, "bob", "pc", None, UserProfile.STANDARD)
    bob_b = dataclasses.replace(bob, backend_addr=b.addr)
    async with await bob_b.connect() as listener, await alice.connect() as pinger:
        assert await listener.cmd("events_subscribe") == {"status": "ok"}
        await pinger.cmd("ping", ping="hello from a")
        async with asyncio.timeout(10):
            rep = await listener.cmd("events_listen", wait=True)
        assert rep == {"status": "ok", "event": "pinged", "ping": "hello from a"}


def test_workers_share_the_port_and_stop_together(migrated_postgresql_url: str) -> None:
    port = free_port()
    parsec = Path(sys.executable).parent / "parsec"
    env = {
        **os.environ,
        "PARSEC_DB": migrated_postgresql_url,
        "PARSEC_BLOCKSTORE": "POSTGRESQL",
        "PARSEC_ADMINISTRATION_TOKEN": ADMINISTRATION_TOKEN,
        "PARSEC_BACKEND_ADDR": f"parsec://127.0.0.1:{port}?no_ssl=true",
        "PARSEC_EMAIL_HOST": "MOCKED",
        "PARSEC_PORT": str(port),
    }
    proc = subprocess.Popen(
        [str(parsec), "backend", "run", "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        addr = BackendAddr("127.0.0.1", port, False)
        deadline = time.monotonic() + 30
        organization_ids = [new_organization_id() for _ in range(6)]

        async def create_all() -> None:
            for organization_id in organization_ids:
                await create_organization(addr, ADMINISTRATION_TOKEN, organization_id)
            for organization_id in organization_ids:
                rep = await admin_command(
                    addr,
                    ADMINISTRATION_TOKEN,
                    "organization_status",
                    organization_id=organization_id,
                )
                assert rep["status"] == "ok"

        while True:
            try:
                asyncio.run(create_all())
                break
            except BackendConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode is not None, output
    # Every worker is gone with the parent: nobody listens any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_realm_events_and_messages_cross_servers(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_servers
    organization_id = new_organization_id()
    token = await create_organization(a.addr, ADMINISTRATION_TOKEN, organization_id)
    alice = await bootstrap_organization(a.addr, organization_id, token, None, None)
    async with await alice.connect() as conn_a:
        bob = await create_user(conn_a, alice, "bob", "pc", None, UserProfile.STANDARD)
        async with await dataclasses.replace(bob, backend_addr=b.addr).connect() as listener:
            assert await listener.cmd("events_subscribe") == {"status": "ok"}
            realm_id = await create_realm(conn_a, alice)
            await share(conn_a, alice, realm_id, "bob", RealmRole.READER, message=b"welcome")
            async with asyncio.timeout(10):
                roles = await listener.cmd("events_listen", wait=True)
                message = await listener.cmd("events_listen", wait=True)
            assert roles == {
                "status": "ok",
                "event": "realm.roles_updated",
                "realm_id": realm_id,
                "role": "READER",
            }
            assert message == {"status": "ok", "event": "message.received", "index": 1}
            rep = await conn_a.cmd(
                "vlob_create",
                realm_id=realm_id,
                encryption_revision=1,
                vlob_id=ID.new(),
                timestamp=DateTime.now(),
                blob=b"manifest",
            )
            assert rep == {"status": "ok"}
            async with asyncio.timeout(10):
                update = await listener.cmd("events_listen", wait=True)
            assert update["event"] == "realm.vlobs_updated"
            assert update["realm_id"] == realm_id
            assert update["src_version"] == 1


async def test_freezing_on_one_server_closes_connections_on_the_other(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_servers
    organization_id = new_organization_id()
    token = await create_organization(a.addr, ADMINISTRATION_TOKEN, organization_id)
    alice = await bootstrap_organization(b.addr, organization_id, token, None, None)
    alice_on_a = dataclasses.replace(alice, backend_addr=a.addr)
    conn_b = await alice.connect()
    freeze_url = (
        f"http://127.0.0.1:{a.addr.port}/administration/organizations/{organization_id}"
        "/users/freeze"
    )
    headers = {"Authorization": f"Bearer {ADMINISTRATION_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(freeze_url, json={"user_id": alice.user_id, "frozen": True}) as rep:
            assert rep.status == 200
        await assert_closed_by_the_server(conn_b)
        with pytest.raises(HandshakeRefused):
            await alice_on_a.connect()
        async with session.post(
            freeze_url, json={"user_id": alice.user_id, "frozen": False}
        ) as rep:
            assert rep.status == 200
    async with await alice.connect() as conn:
        assert (await conn.cmd("ping", ping="back"))["status"] == "ok"
