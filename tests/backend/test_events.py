"""`ping` events and the events commands (protocol/30-commands-org-user-invite.md §3, §9)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from parsec_server.api import codec
from parsec_server.api.handshake import API_V1, API_V2
from parsec_server.api.ids import InvitationType, RealmRole
from parsec_server.backend import client_events
from parsec_server.backend.client_context import (
    CLOSE_EVENTS_MISSED,
    CLOSE_EVENTS_OVERFLOW,
    AuthenticatedClientContext,
)
from parsec_server.backend.client_events import (
    MAX_PENDING_BYTES,
    MAX_PENDING_EVENTS,
    ClientEvents,
)
from parsec_server.backend.events import (
    Event,
    InviteConduitUpdatedEvent,
    PingedEvent,
    RealmRolesUpdatedEvent,
)
from parsec_server.client.connection import AnonymousAuth, BackendConnection, InvitedAuth
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import bootstrap_organization, create_organization
from parsec_server.client.user import create_device
from tests.backend.common import (
    TIMEOUT,
    administration_ws,
    anonymous_ws,
    assert_closed_without_reply,
    assert_still_open,
    authenticated_ws,
    pinged,
    recv_reply,
    send_cmd,
    wait_set,
    wait_until,
    watch_events,
)
from tests.backend.realm_helpers import (
    OK,
    dispatched,
    listen,
    new_id,
    new_realm,
    roles_updated,
    update_roles,
    vlob_create,
    vlobs_updated,
)
from tests.fixtures.servers import (
    ADMINISTRATION_TOKEN,
    Organization,
    RunningServer,
    new_organization_id,
)

NO_EVENTS = {"status": "no_events"}


def pinged_event(ping: str) -> dict[str, Any]:
    return {"status": "ok", "event": "pinged", "ping": ping}


async def subscribed_ws(
    device: LocalDevice, api_version: tuple[int, int] = API_V2
) -> ClientConnection:
    ws = await authenticated_ws(device, api_version)
    assert await send_cmd(ws, "events_subscribe") == {"status": "ok"}
    return ws


async def ping_from(device: LocalDevice, ping: str) -> None:
    async with await device.connect() as conn:
        assert await conn.cmd("ping", ping=ping) == {"status": "ok", "pong": ping}


async def ping_and_wait_dispatched(server: RunningServer, device: LocalDevice, ping: str) -> None:
    """Ping, and return once the server has handed the event to every connection."""
    dispatched = watch_events(server, pinged(ping))
    await ping_from(device, ping)
    await wait_set(dispatched)


async def test_ping_emits_pinged_to_another_device_subscribed_connection(
    org: Organization,
) -> None:
    bob_ws = await subscribed_ws(org.bob)
    await ping_from(org.alice, "hello")
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("hello")
    await bob_ws.close()


async def test_ping_is_not_delivered_to_the_connections_of_the_same_device(
    server: RunningServer, org: Organization
) -> None:
    alice_ws = await subscribed_ws(org.alice)
    await ping_and_wait_dispatched(server, org.alice, "mine")
    assert await send_cmd(alice_ws, "events_listen", wait=False) == NO_EVENTS
    await alice_ws.close()


async def test_ping_is_delivered_to_another_device_of_the_same_user(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        alice2 = await create_device(conn, org.alice, "pc2")
    alice_ws = await subscribed_ws(org.alice)
    await ping_from(alice2, "from my other device")
    assert await send_cmd(alice_ws, "events_listen") == pinged_event("from my other device")
    await alice_ws.close()


async def test_ping_on_api_1_connections_emits_and_delivers_events(org: Organization) -> None:
    bob_ws = await subscribed_ws(org.bob, API_V1)
    async with await org.alice.connect(api_version=API_V1) as conn:
        assert (await conn.cmd("ping", ping="v1"))["status"] == "ok"
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("v1")
    await bob_ws.close()


async def test_ping_on_anonymous_or_administration_connections_emits_nothing(
    server: RunningServer, org: Organization
) -> None:
    bob_ws = await subscribed_ws(org.bob)
    anonymous = await anonymous_ws(server.addr, org.organization_id)
    assert await send_cmd(anonymous, "ping", ping="anonymous") == {
        "status": "ok",
        "pong": "anonymous",
    }
    administration = await administration_ws(server.addr)
    assert await send_cmd(administration, "ping", ping="admin") == {
        "status": "ok",
        "pong": "admin",
    }
    # Events are delivered in order: the first one bob gets is the next authenticated ping.
    await ping_from(org.alice, "sentinel")
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("sentinel")
    for ws in (bob_ws, anonymous, administration):
        await ws.close()


async def test_ping_of_another_organization_is_not_delivered(
    server: RunningServer, org: Organization
) -> None:
    other_id = new_organization_id()
    token = await create_organization(server.addr, ADMINISTRATION_TOKEN, other_id)
    other = await bootstrap_organization(server.addr, other_id, token, None, None)
    bob_ws = await subscribed_ws(org.bob)
    await ping_and_wait_dispatched(server, other, "elsewhere")
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    await bob_ws.close()


async def test_events_are_not_collected_before_subscribing(
    server: RunningServer, org: Organization
) -> None:
    bob_ws = await authenticated_ws(org.bob)
    await ping_and_wait_dispatched(server, org.alice, "too early")
    assert await send_cmd(bob_ws, "events_subscribe") == {"status": "ok"}
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    await ping_from(org.alice, "in time")
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("in time")
    await bob_ws.close()


async def test_events_listen_without_wait_and_no_event_is_no_events(org: Organization) -> None:
    bob_ws = await subscribed_ws(org.bob)
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    await bob_ws.close()


async def test_events_listen_without_wait_and_without_subscription_is_no_events(
    org: Organization,
) -> None:
    bob_ws = await authenticated_ws(org.bob)
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    await bob_ws.close()


async def test_events_are_delivered_in_order(org: Organization) -> None:
    bob_ws = await subscribed_ws(org.bob)
    for ping in ("one", "two", "three"):
        await ping_from(org.alice, ping)
    for ping in ("one", "two", "three"):
        assert await send_cmd(bob_ws, "events_listen") == pinged_event(ping)
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    await bob_ws.close()


async def test_waiting_events_listen_replies_when_the_event_arrives(org: Organization) -> None:
    bob_ws = await subscribed_ws(org.bob)
    await bob_ws.send(codec.encode({"cmd": "events_listen", "wait": True}))
    await ping_from(org.alice, "wake up")
    assert await recv_reply(bob_ws) == pinged_event("wake up")
    await bob_ws.close()


async def test_waiting_events_listen_is_abandoned_without_reply_by_a_new_request(
    server: RunningServer, org: Organization
) -> None:
    bob_ws = await subscribed_ws(org.bob)
    await bob_ws.send(codec.encode({"cmd": "events_listen"}))
    # The next reply is the new request's: the abandoned listen never answers.
    assert await send_cmd(bob_ws, "ping", ping="interrupt") == {"status": "ok", "pong": "interrupt"}
    # It had no further effect: the next event stays queued for the next listen.
    await ping_and_wait_dispatched(server, org.alice, "later")
    assert await send_cmd(bob_ws, "events_listen", wait=False) == pinged_event("later")
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    await bob_ws.close()


async def test_waiting_events_listen_can_be_abandoned_by_another_events_listen(
    org: Organization,
) -> None:
    bob_ws = await subscribed_ws(org.bob)
    await bob_ws.send(codec.encode({"cmd": "events_listen"}))
    await bob_ws.send(codec.encode({"cmd": "events_listen", "wait": False}))
    assert await recv_reply(bob_ws) == NO_EVENTS
    await ping_from(org.alice, "after")
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("after")
    await bob_ws.close()


async def test_waiting_events_listen_without_subscription_waits_until_abandoned(
    server: RunningServer, org: Organization
) -> None:
    bob_ws = await authenticated_ws(org.bob)
    await bob_ws.send(codec.encode({"cmd": "events_listen"}))
    await ping_and_wait_dispatched(server, org.alice, "ignored")
    assert await send_cmd(bob_ws, "ping", ping="next") == {"status": "ok", "pong": "next"}
    await bob_ws.close()


async def test_events_subscribe_is_idempotent(server: RunningServer, org: Organization) -> None:
    bob_ws = await subscribed_ws(org.bob)
    assert await send_cmd(bob_ws, "events_subscribe") == {"status": "ok"}
    await ping_and_wait_dispatched(server, org.alice, "once")
    # Subscribing again neither duplicates nor drops what is queued.
    assert await send_cmd(bob_ws, "events_subscribe") == {"status": "ok"}
    assert await send_cmd(bob_ws, "events_listen", wait=False) == pinged_event("once")
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    await bob_ws.close()


# The queue of a connection that does not read its events


def server_side_events(server: RunningServer, device: LocalDevice) -> ClientEvents:
    """The event queue of the device's only connection."""
    [conn] = server.app.connections.of_user(device.organization_id, device.user_id)
    client = conn.client
    assert isinstance(client, AuthenticatedClientContext)
    return client.events


async def send_pings(server: RunningServer, author: LocalDevice, pings: Iterable[str]) -> None:
    """Publish `pinged` events straight through the event bus (as `ping` would), and
    return once the last one was dispatched to the connections."""
    last = None
    for ping in pings:
        last = ping
        await server.app.event_bus.send(
            PingedEvent(organization_id=author.organization_id, author=author.device_id, ping=ping)
        )
    if last is not None:
        dispatched = watch_events(server, pinged(last))
        # Dispatched already (memory), or soon (PostgreSQL): one more event tells us.
        await server.app.event_bus.send(
            PingedEvent(organization_id=author.organization_id, author="", ping=last)
        )
        await wait_set(dispatched)


async def test_event_queue_holds_its_bound_of_events_without_closing(
    server: RunningServer, org: Organization
) -> None:
    assert MAX_PENDING_EVENTS == 1000
    bob_ws = await subscribed_ws(org.bob)
    await send_pings(server, org.alice, (str(i) for i in range(MAX_PENDING_EVENTS - 1)))
    # The sentinel of `send_pings` is the last one that fits.
    for i in range(MAX_PENDING_EVENTS - 1):
        assert await send_cmd(bob_ws, "events_listen", wait=False) == pinged_event(str(i))
    assert await send_cmd(bob_ws, "events_listen", wait=False) == pinged_event(
        str(MAX_PENDING_EVENTS - 2)
    )
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    # Drained, it accepts as many again.
    await ping_from(org.alice, "after")
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("after")
    await bob_ws.close()


async def test_subscribed_connection_that_never_reads_its_events_is_closed_with_1013(
    server: RunningServer, org: Organization
) -> None:
    assert CLOSE_EVENTS_OVERFLOW == 1013
    bob_ws = await subscribed_ws(org.bob)
    alice_ws = await subscribed_ws(org.alice)
    events = server_side_events(server, org.bob)
    largest = {"count": 0, "bytes": 0}

    def measure(event: Event) -> None:
        largest["count"] = max(largest["count"], events.pending_count)
        largest["bytes"] = max(largest["bytes"], events.pending_bytes)

    server.app.event_bus.connect(measure)
    await send_pings(server, org.alice, (f"ping number {i}" for i in range(10_000)))

    assert largest["count"] == MAX_PENDING_EVENTS
    assert largest["bytes"] <= MAX_PENDING_BYTES
    # Past the bound the queue was dropped and stayed empty: memory is flat.
    assert events.overflowed
    assert events.pending_count == 0
    assert events.pending_bytes == 0
    assert await assert_closed_without_reply(bob_ws) == CLOSE_EVENTS_OVERFLOW
    await wait_until(lambda: not server.app.connections.of_user(org.organization_id, "bob"))
    # Alice's connection (her own pings are not for her) and new connections are fine.
    await assert_still_open(alice_ws)
    bob_ws = await subscribed_ws(org.bob)
    await ping_from(org.alice, "again")
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("again")
    for ws in (alice_ws, bob_ws):
        await ws.close()


async def test_event_queue_is_bounded_in_bytes_too(
    server: RunningServer, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob_ws = await subscribed_ws(org.bob)
    events = server_side_events(server, org.bob)
    long_ping = "x" * 64
    await send_pings(server, org.alice, [long_ping])
    size = events.pending_bytes // 2  # the ping and the sentinel of `send_pings`
    assert size > 64
    monkeypatch.setattr(client_events, "MAX_PENDING_BYTES", 10 * size)
    await send_pings(server, org.alice, [long_ping] * 7)  # 10 in all, with the sentinels
    assert events.pending_bytes == 10 * size
    assert events.pending_count == 10
    await server.app.event_bus.send(
        PingedEvent(organization_id=org.organization_id, author="", ping=long_ping)
    )
    assert await assert_closed_without_reply(bob_ws) == CLOSE_EVENTS_OVERFLOW


# events_subscribe and the role changes happening while it reads the user's realms


async def test_role_changes_while_subscribing_are_not_missed(
    server: RunningServer, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed = await new_realm(org.alice, {org.bob: RealmRole.READER})
    granted = await new_realm(org.alice)
    read_done, release = asyncio.Event(), asyncio.Event()
    read_realms = server.app.events._realms_of_user

    async def slow_read(organization_id: str, user_id: str) -> set[uuid.UUID]:
        realms = await read_realms(organization_id, user_id)
        read_done.set()
        await release.wait()
        return realms

    monkeypatch.setattr(server.app.events, "_realms_of_user", slow_read)
    bob_ws = await authenticated_ws(org.bob)
    await bob_ws.send(codec.encode({"cmd": "events_subscribe"}))
    await wait_set(read_done)
    # Bob's realms are read (he is in `removed` only): now his roles change.
    changes = [
        dispatched(server, RealmRolesUpdatedEvent, realm_id=removed, user_id="bob"),
        dispatched(server, RealmRolesUpdatedEvent, realm_id=granted, user_id="bob"),
    ]
    async with await org.alice.connect() as alice:
        assert await update_roles(alice, org.alice, removed, "bob", None) == OK
        assert await update_roles(alice, org.alice, granted, "bob", RealmRole.READER) == OK
        for flag in changes:
            await wait_set(flag)
        release.set()
        assert await recv_reply(bob_ws) == OK

        removed_vlob, granted_vlob = new_id(), new_id()
        assert await vlob_create(alice, removed, removed_vlob) == OK
        assert await vlob_create(alice, granted, granted_vlob) == OK
    assert await listen(bob_ws) == roles_updated(removed, None)
    assert await listen(bob_ws) == roles_updated(granted, RealmRole.READER)
    # The realm he left says nothing more, the new one does.
    assert await listen(bob_ws) == vlobs_updated(granted, 1, granted_vlob, 1)
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    await bob_ws.close()


async def test_a_connection_subscribing_when_events_are_missed_is_closed_and_forgotten(
    server: RunningServer, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_started = asyncio.Event()

    async def endless_read(organization_id: str, user_id: str) -> set[uuid.UUID]:
        read_started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(server.app.events, "_realms_of_user", endless_read)
    bob_ws = await authenticated_ws(org.bob)
    await bob_ws.send(codec.encode({"cmd": "events_subscribe"}))
    await wait_set(read_started)
    events = server_side_events(server, org.bob)
    assert events.subscribed

    server.app.event_bus.notify_events_missed("test")

    assert await assert_closed_without_reply(bob_ws) == CLOSE_EVENTS_MISSED
    await wait_until(lambda: not server.app.connections.of_user(org.organization_id, "bob"))
    assert not events.subscribed
    assert events.role_changes is None
    assert not server.app.connections._subscribed_by_organization


# Events missed by the server (e.g. its PostgreSQL listening connection was lost)


async def test_events_missed_closes_the_subscribed_connections_with_1012(
    server: RunningServer, org: Organization
) -> None:
    assert CLOSE_EVENTS_MISSED == 1012
    bob_ws = await subscribed_ws(org.bob)
    mallory_ws = await subscribed_ws(org.mallory, API_V1)
    alice_ws = await authenticated_ws(org.alice)  # not subscribed
    anonymous = await anonymous_ws(server.addr, org.organization_id)

    server.app.event_bus.notify_events_missed("test")

    assert await assert_closed_without_reply(bob_ws) == CLOSE_EVENTS_MISSED
    assert await assert_closed_without_reply(mallory_ws) == CLOSE_EVENTS_MISSED
    await assert_still_open(alice_ws)
    await assert_still_open(anonymous)
    # A new connection gets the events of from now on.
    bob_ws = await subscribed_ws(org.bob)
    await ping_from(org.alice, "back")
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("back")
    for ws in (alice_ws, anonymous, bob_ws):
        await ws.close()


async def test_a_rendezvous_waiting_for_a_missed_conduit_event_goes_on_when_told(
    server: RunningServer, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = server.app.event_bus
    dispatch = bus._dispatch
    losing, lost = False, asyncio.Event()

    def lossy_dispatch(event: Event) -> None:
        if losing and isinstance(event, InviteConduitUpdatedEvent):
            lost.set()
            return
        dispatch(event)

    monkeypatch.setattr(bus, "_dispatch", lossy_dispatch)
    async with await org.alice.connect() as alice:
        rep = await alice.cmd("invite_new", type="DEVICE", send_email=False)
        token = rep["token"]
        greeter_talked = watch_events(server, lambda e: isinstance(e, InviteConduitUpdatedEvent))
        greeter = asyncio.create_task(
            alice.cmd("invite_1_greeter_wait_peer", token=token, greeter_public_key=b"G" * 32)
        )
        await wait_set(greeter_talked)
        losing = True  # the claimer's arrival goes unnoticed
        auth = InvitedAuth(org.organization_id, InvitationType.DEVICE, token)
        async with await BackendConnection.connect(server.addr, auth) as claimer_conn:
            claimer = asyncio.create_task(
                claimer_conn.cmd("invite_1_claimer_wait_peer", claimer_public_key=b"C" * 32)
            )
            await wait_set(lost)
            await asyncio.sleep(0.2)
            assert not greeter.done() and not claimer.done()
            losing = False

            bus.notify_events_missed("test")

            async with asyncio.timeout(TIMEOUT):
                assert await greeter == {"status": "ok", "claimer_public_key": b"C" * 32}
                assert await claimer == {"status": "ok", "greeter_public_key": b"G" * 32}


async def test_an_api_1_invitation_waiting_for_a_missed_claim_is_closed_with_1012(
    server: RunningServer, org: Organization
) -> None:
    alice_ws = await authenticated_ws(org.alice, API_V1)
    await alice_ws.send(codec.encode({"cmd": "user_invite", "user_id": "zack"}))
    async with await BackendConnection.connect(
        server.addr, AnonymousAuth(org.organization_id)
    ) as anonymous:
        async with asyncio.timeout(TIMEOUT):
            while (  # noqa: ASYNC110 (remote state)
                await anonymous.cmd("user_get_invitation_creator", invited_user_id="zack")
            )["status"] != "ok":
                await asyncio.sleep(0.02)

    server.app.event_bus.notify_events_missed("test")

    assert await assert_closed_without_reply(alice_ws) == CLOSE_EVENTS_MISSED
