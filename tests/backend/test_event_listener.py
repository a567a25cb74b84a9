"""The PostgreSQL event listening connection: a lost one (killed, or stalled without any
reset) is noticed and replaced, and the connections that may have missed events are
closed with code 1012; events too large for one notification are sent in chunks
(docs/events.md)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.backend.client_context import CLOSE_EVENTS_MISSED
from parsec_server.backend.events import APIV1InvitationClaimedEvent, Event, PingedEvent
from parsec_server.backend.storage.postgresql.event_bus import (
    LISTENER_APPLICATION_NAME,
    MAX_PAYLOAD_SIZE,
    PostgreSQLEventBus,
    split_payload,
)
from tests.backend.common import (
    TIMEOUT,
    assert_closed_without_reply,
    assert_still_open,
    authenticated_ws,
    send_cmd,
    wait_set,
    watch_events,
)
from tests.backend.test_events import ping_from, pinged_event, subscribed_ws
from tests.fixtures.servers import RunningServer, create_org, make_config, running_server
from tests.fixtures.tcp_proxy import tcp_proxy

CHECK_INTERVAL = 0.5


@pytest.fixture
async def raw_db(migrated_postgresql_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(migrated_postgresql_url)
    try:
        yield conn
    finally:
        await conn.close()


def bus_of(server: RunningServer) -> PostgreSQLEventBus:
    bus = server.app.event_bus
    assert isinstance(bus, PostgreSQLEventBus)
    return bus


def test_a_silent_loss_is_noticed_within_10_seconds_by_default() -> None:
    assert 2 * make_config().events_check_interval <= 10


async def test_killed_listener_closes_subscribed_connections_with_1012_then_events_flow(
    migrated_postgresql_url: str, raw_db: asyncpg.Connection
) -> None:
    async with running_server(make_config(migrated_postgresql_url)) as server:
        org = await create_org(server)
        bus = bus_of(server)
        killed = bus.listener_pid
        assert killed is not None
        name = await raw_db.fetchval(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1", killed
        )
        assert name == LISTENER_APPLICATION_NAME
        bob_ws = await subscribed_ws(org.bob)
        alice_ws = await authenticated_ws(org.alice)  # not subscribed: stays

        assert await raw_db.fetchval("SELECT pg_terminate_backend($1)", killed)

        assert await assert_closed_without_reply(bob_ws) == CLOSE_EVENTS_MISSED
        assert bus.listener_pid not in (None, killed)
        await assert_still_open(alice_ws)
        bob_ws = await subscribed_ws(org.bob)
        await ping_from(org.alice, "after the loss")
        assert await send_cmd(bob_ws, "events_listen") == pinged_event("after the loss")
        for ws in (alice_ws, bob_ws):
            await ws.close()


async def test_stalled_listener_is_noticed_within_the_check_delay_and_replaced(
    migrated_postgresql_url: str, raw_db: asyncpg.Connection
) -> None:
    # The server reaches PostgreSQL through a proxy, which stalls the listening connection
    # only: no reset, no close, the packets just stop.
    target = urlsplit(migrated_postgresql_url)
    assert target.hostname is not None
    async with tcp_proxy(target.hostname, target.port or 5432) as proxy:
        user, at, _ = target.netloc.rpartition("@")
        through_proxy = urlunsplit(target._replace(netloc=f"{user}{at}127.0.0.1:{proxy.port}"))
        config = make_config(through_proxy, events_check_interval=CHECK_INTERVAL)
        async with running_server(config) as server:
            org = await create_org(server)
            bus = bus_of(server)
            stalled = bus.listener_pid
            bob_ws = await subscribed_ws(org.bob)
            port = await raw_db.fetchval(
                "SELECT client_port FROM pg_stat_activity WHERE pid = $1", stalled
            )
            loop = asyncio.get_running_loop()

            proxy.stall(port)
            started = loop.time()
            await ping_from(org.alice, "sent while stalled")  # never reaches this server

            assert await assert_closed_without_reply(bob_ws) == CLOSE_EVENTS_MISSED
            # Noticed within 2 intervals; some slack for the reconnection on a busy machine.
            assert loop.time() - started < 2 * CHECK_INTERVAL + 2.0
            assert bus.listener_pid not in (None, stalled)
            bob_ws = await subscribed_ws(org.bob)
            await ping_from(org.alice, "after the stall")
            assert await send_cmd(bob_ws, "events_listen") == pinged_event("after the stall")
            await bob_ws.close()


def test_large_payloads_are_split_between_characters() -> None:
    payload = '{"ping":"' + "aé✔𝄞" * 5000 + '"}'
    chunks = split_payload(payload)
    assert len(chunks) > 1
    pieces = []
    for index, chunk in enumerate(chunks):
        assert len(chunk.encode()) <= MAX_PAYLOAD_SIZE
        header, _, piece = chunk[1:].partition("#")
        assert chunk[0] == "#"
        assert header == f"{index}/{len(chunks)}"
        pieces.append(piece)
    assert "".join(pieces) == payload


async def test_events_too_large_for_one_notification_arrive_whole_and_in_order(
    migrated_postgresql_url: str,
) -> None:
    async with running_server(make_config(migrated_postgresql_url)) as server:
        sent: list[Event] = [
            APIV1InvitationClaimedEvent(
                organization_id="Org", invited_id="zack", encrypted_claim=os.urandom(100_000)
            ),
            PingedEvent(organization_id="Org", author="a@b", ping="aé✔𝄞" * 3000),
            PingedEvent(organization_id="Org", author="a@b", ping="small"),
        ]
        received: list[Event] = []
        last = asyncio.Event()

        def record(event: Event) -> None:
            received.append(event)
            if event == sent[-1]:
                last.set()

        server.app.event_bus.connect(record)
        for event in sent:
            await server.app.event_bus.send(event)
        await wait_set(last)
        assert received == sent


async def test_events_sent_concurrently_with_large_ones_all_arrive(
    migrated_postgresql_url: str,
) -> None:
    async with running_server(make_config(migrated_postgresql_url)) as server:
        large = [
            PingedEvent(organization_id="Org", author="a@b", ping=f"{i}" + "x" * 30_000)
            for i in range(5)
        ]
        small = [PingedEvent(organization_id="Org", author="a@b", ping=f"{i}") for i in range(50)]
        expected = set(large) | set(small)
        received: set[Event] = set()
        server.app.event_bus.connect(received.add)
        complete = watch_events(server, lambda event: received >= expected)
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(server.app.event_bus.send(e) for e in [*large, *small]))
        await wait_set(complete)
