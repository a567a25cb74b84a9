"""`ping` events and the events commands (protocol/30-commands-org-user-invite.md §3, §9)."""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection

from parsec_server.api import codec
from parsec_server.api.handshake import API_V1, API_V2
from parsec_server.backend.client_events import MAX_PENDING_EVENTS
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import bootstrap_organization, create_organization
from parsec_server.client.user import create_device
from tests.backend.common import (
    administration_ws,
    anonymous_ws,
    authenticated_ws,
    pinged,
    recv_reply,
    send_cmd,
    wait_set,
    watch_events,
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


async def test_event_queue_keeps_the_first_100_events_and_drops_the_next(
    server: RunningServer, org: Organization
) -> None:
    assert MAX_PENDING_EVENTS == 100
    bob_ws = await subscribed_ws(org.bob)
    last_dispatched = watch_events(server, pinged("104"))
    async with await org.alice.connect() as conn:
        for i in range(105):
            assert (await conn.cmd("ping", ping=str(i)))["status"] == "ok"
    await wait_set(last_dispatched)
    for i in range(100):
        assert await send_cmd(bob_ws, "events_listen", wait=False) == pinged_event(str(i))
    assert await send_cmd(bob_ws, "events_listen", wait=False) == NO_EVENTS
    # Once drained, the queue accepts events again.
    await ping_from(org.alice, "after")
    assert await send_cmd(bob_ws, "events_listen") == pinged_event("after")
    await bob_ws.close()
