"""message_get (protocol/30-commands-org-user-invite.md §8): per-user messages appended by
realm commands."""

from __future__ import annotations

from typing import Any

import pytest

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.client.device import LocalDevice
from parsec_server.client.user import create_device
from tests.backend.realm_helpers import (
    OK,
    listen,
    message_received,
    new_realm,
    now,
    subscribed_ws,
    update_roles,
)
from tests.fixtures.servers import Organization


async def message_get(device: LocalDevice, offset: int) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd("message_get", offset=offset)


async def three_messages_for_bob(org: Organization) -> list[DateTime]:
    """alice shares three realms with bob, one message each (bodies `m1`, `m2`, `m3`);
    returns the messages' timestamps."""
    timestamps = [now().add(-30), now().add(-20), now().add(-10)]
    for index, timestamp in enumerate(timestamps, 1):
        # Created at the sharing's timestamp at the latest: alice must be its OWNER by then.
        realm_id = await new_realm(org.alice, created_on=timestamp)
        async with await org.alice.connect() as conn:
            reply = await update_roles(
                conn, org.alice, realm_id, "bob", RealmRole.READER, f"m{index}".encode(), timestamp
            )
            assert reply == OK
    return timestamps


def message(count: int, timestamp: DateTime, sender: str = "alice@laptop") -> dict[str, Any]:
    return {"count": count, "sender": sender, "timestamp": timestamp, "body": f"m{count}".encode()}


async def test_message_get_without_messages(org: Organization) -> None:
    assert await message_get(org.bob, 0) == {"status": "ok", "messages": []}


async def test_message_get_returns_every_message_in_order_with_its_fields(
    org: Organization,
) -> None:
    timestamps = await three_messages_for_bob(org)
    assert await message_get(org.bob, 0) == {
        "status": "ok",
        "messages": [message(i, ts) for i, ts in enumerate(timestamps, 1)],
    }


@pytest.mark.parametrize(("offset", "counts"), [(1, [2, 3]), (2, [3]), (3, []), (100, [])])
async def test_message_get_skips_the_first_offset_messages(
    org: Organization, offset: int, counts: list[int]
) -> None:
    timestamps = await three_messages_for_bob(org)
    assert await message_get(org.bob, offset) == {
        "status": "ok",
        "messages": [message(i, timestamps[i - 1]) for i in counts],
    }


async def test_message_get_with_a_negative_offset_is_bad_message(org: Organization) -> None:
    reply = await message_get(org.bob, -1)
    assert reply["status"] == "bad_message"


async def test_messages_belong_to_the_user_and_all_its_devices_see_them(
    org: Organization,
) -> None:
    async with await org.bob.connect() as conn:
        bob2 = await create_device(conn, org.bob, "tablet")
    timestamps = await three_messages_for_bob(org)
    expected = {"status": "ok", "messages": [message(i, ts) for i, ts in enumerate(timestamps, 1)]}
    assert await message_get(bob2, 0) == expected
    assert await message_get(org.bob, 0) == expected
    assert await message_get(org.alice, 0) == {"status": "ok", "messages": []}
    assert await message_get(org.mallory, 0) == {"status": "ok", "messages": []}


async def test_messages_are_numbered_per_user(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        assert await update_roles(conn, org.alice, realm_id, "bob", RealmRole.READER, b"b") == OK
        assert await update_roles(conn, org.alice, realm_id, "mallory", RealmRole.READER, b"m") == (
            OK
        )
    assert [m["count"] for m in (await message_get(org.mallory, 0))["messages"]] == [1]
    assert [m["count"] for m in (await message_get(org.bob, 0))["messages"]] == [1]


async def test_message_received_reaches_every_device_of_the_recipient(org: Organization) -> None:
    async with await org.bob.connect() as conn:
        bob2 = await create_device(conn, org.bob, "tablet")
    bob_ws = await subscribed_ws(org.bob)
    bob2_ws = await subscribed_ws(bob2)
    await three_messages_for_bob(org)
    for ws in (bob_ws, bob2_ws):
        for index in (1, 2, 3):
            assert (await listen(ws))["event"] == "realm.roles_updated"
            assert await listen(ws) == message_received(index)
        await ws.close()


async def test_message_sender_is_the_author_device(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.OWNER})
    timestamp = now()
    async with await org.bob.connect() as conn:
        reply = await update_roles(
            conn, org.bob, realm_id, "mallory", RealmRole.CONTRIBUTOR, b"m1", timestamp
        )
        assert reply == OK
    assert await message_get(org.mallory, 0) == {
        "status": "ok",
        "messages": [message(1, timestamp, sender="bob@desktop")],
    }
