"""Vlob commands (protocol/40-realm-vlob.md §5): vlob_create, vlob_read, vlob_update,
vlob_poll_changes, vlob_list_versions, their role checks, `realm.vlobs_updated` events and
the isolation of organizations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parsec_server.api import codec
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.backend.events import RealmVlobsUpdatedEvent
from parsec_server.client.device import LocalDevice
from parsec_server.client.realm import create_realm
from parsec_server.client.user import create_device
from tests.backend.common import wait_set
from tests.backend.realm_helpers import (
    BAD_ENCRYPTION_REVISION,
    BAD_VERSION,
    NOT_ALLOWED,
    OK,
    OUT_OF_DATE,
    assert_no_event,
    dispatched,
    listen,
    new_id,
    new_realm,
    not_in_maintenance,
    now,
    realm_not_found,
    roles_updated,
    subscribed_ws,
    update_roles,
    vlob_create,
    vlob_not_found,
    vlob_read,
    vlob_update,
    vlobs_updated,
)
from tests.fixtures import VECTORS_DIR
from tests.fixtures.servers import Organization, RunningServer, create_org

BALLPARK = 1800.0
WRITE_ROLES = [RealmRole.OWNER, RealmRole.MANAGER, RealmRole.CONTRIBUTOR]


def read_reply(version: int, blob: bytes, author: str, timestamp: DateTime) -> dict[str, Any]:
    return {
        "status": "ok",
        "version": version,
        "blob": blob,
        "author": author,
        "timestamp": timestamp,
    }


async def realm_with_vlob(
    owner: LocalDevice,
    members: dict[LocalDevice, RealmRole] | None = None,
    blob: bytes = b"v1",
) -> tuple[ID, ID]:
    """(realm id, vlob id): a realm of `owner` with one vlob at version 1."""
    realm_id = await new_realm(owner, members)
    vlob_id = new_id()
    async with await owner.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, blob) == OK
    return realm_id, vlob_id


async def three_versions(org: Organization) -> tuple[ID, list[DateTime]]:
    """A vlob of alice written at 3 timestamps 10 s apart (in the past)."""
    start = now().add(-60)
    timestamps = [start, start.add(10), start.add(20)]
    realm_id = await new_realm(org.alice)
    vlob_id = new_id()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, b"v1", timestamps[0]) == OK
        assert await vlob_update(conn, vlob_id, 2, b"v2", timestamps[1]) == OK
        assert await vlob_update(conn, vlob_id, 3, b"v3", timestamps[2]) == OK
    return vlob_id, timestamps


async def read_by(device: LocalDevice, vlob_id: ID, **fields: Any) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await vlob_read(conn, vlob_id, **fields)


async def poll(device: LocalDevice, realm_id: ID, last_checkpoint: int) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd(
            "vlob_poll_changes", realm_id=realm_id, last_checkpoint=last_checkpoint
        )


async def list_versions(device: LocalDevice, vlob_id: ID) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd("vlob_list_versions", vlob_id=vlob_id)


# vlob_create and vlob_read


async def test_vlob_create_then_read_the_latest(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    vlob_id, timestamp = new_id(), now()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, b"<manifest>", timestamp) == OK
        reply = await vlob_read(conn, vlob_id)
    assert reply == read_reply(1, b"<manifest>", "alice@laptop", timestamp)


async def test_vlob_read_without_optional_keys(org: Organization) -> None:
    _, vlob_id = await realm_with_vlob(org.alice, blob=b"blob")
    async with await org.alice.connect() as conn:
        reply = await conn.cmd("vlob_read", encryption_revision=1, vlob_id=vlob_id)
    assert reply["status"] == "ok"
    assert (reply["version"], reply["blob"]) == (1, b"blob")


async def test_vlob_read_by_version(org: Organization) -> None:
    vlob_id, timestamps = await three_versions(org)
    reply = await read_by(org.alice, vlob_id, version=2)
    assert reply == read_reply(2, b"v2", "alice@laptop", timestamps[1])


async def test_vlob_read_latest_after_updates(org: Organization) -> None:
    vlob_id, timestamps = await three_versions(org)
    assert await read_by(org.alice, vlob_id) == read_reply(3, b"v3", "alice@laptop", timestamps[2])


@pytest.mark.parametrize(
    ("offset", "expected_version"),
    [(0.0, 1), (5.0, 1), (10.0, 2), (19.999999, 2), (20.0, 3), (3600.0, 3)],
)
async def test_vlob_read_by_timestamp_gives_the_last_version_at_that_time(
    org: Organization, offset: float, expected_version: int
) -> None:
    vlob_id, timestamps = await three_versions(org)
    reply = await read_by(org.alice, vlob_id, timestamp=timestamps[0].add(offset))
    assert reply["status"] == "ok"
    assert reply["version"] == expected_version
    assert reply["timestamp"] == timestamps[expected_version - 1]
    assert reply["blob"] == f"v{expected_version}".encode()


async def test_vlob_read_by_timestamp_before_the_first_version_is_bad_version(
    org: Organization,
) -> None:
    vlob_id, timestamps = await three_versions(org)
    reply = await read_by(org.alice, vlob_id, timestamp=timestamps[0].add(-0.000001))
    assert reply == BAD_VERSION


async def test_vlob_read_version_wins_over_timestamp(org: Organization) -> None:
    vlob_id, timestamps = await three_versions(org)
    reply = await read_by(org.alice, vlob_id, version=1, timestamp=timestamps[2])
    assert reply == read_reply(1, b"v1", "alice@laptop", timestamps[0])
    # Even a timestamp before any version does not matter when a version is given.
    reply = await read_by(org.alice, vlob_id, version=3, timestamp=timestamps[0].add(-100))
    assert reply["version"] == 3


@pytest.mark.parametrize("version", [2, 100])
async def test_vlob_read_of_a_version_after_the_latest_is_bad_version(
    org: Organization, version: int
) -> None:
    _, vlob_id = await realm_with_vlob(org.alice)
    assert await read_by(org.alice, vlob_id, version=version) == BAD_VERSION


async def test_vlob_read_of_version_0_is_bad_message(org: Organization) -> None:
    _, vlob_id = await realm_with_vlob(org.alice)
    reply = await read_by(org.alice, vlob_id, version=0)
    assert reply["status"] == "bad_message"


async def test_vlob_read_of_an_unknown_vlob_is_not_found(org: Organization) -> None:
    vlob_id = new_id()
    assert await read_by(org.alice, vlob_id) == vlob_not_found(vlob_id)


@pytest.mark.parametrize("encryption_revision", [0, 2])
async def test_vlob_read_with_another_encryption_revision_is_bad_encryption_revision(
    org: Organization, encryption_revision: int
) -> None:
    _, vlob_id = await realm_with_vlob(org.alice)
    reply = await read_by(org.alice, vlob_id, encryption_revision=encryption_revision)
    assert reply == BAD_ENCRYPTION_REVISION


async def test_vlob_timestamp_round_trips_to_the_microsecond(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    vlob_id = new_id()
    base = now().dt.replace(microsecond=0)
    created = DateTime(base.replace(microsecond=123457))
    updated = DateTime(base.replace(microsecond=999999))
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, b"v1", created) == OK
        assert await vlob_update(conn, vlob_id, 2, b"v2", updated) == OK
        first = await conn.send_raw(
            codec.encode(
                {"cmd": "vlob_read", "encryption_revision": 1, "vlob_id": vlob_id, "version": 1}
            )
        )
        second = await vlob_read(conn, vlob_id, version=2)
        versions = await conn.cmd("vlob_list_versions", vlob_id=vlob_id)
    assert first["timestamp"].dt == created.dt
    assert first["timestamp"].dt.microsecond == 123457
    assert second["timestamp"].dt.microsecond == 999999
    # Bit for bit: the float the server sends is the one the client wrote.
    assert codec.encode(first["timestamp"]) == codec.encode(created)
    assert versions["versions"] == {1: [created, "alice@laptop"], 2: [updated, "alice@laptop"]}


async def test_vlob_timestamp_keeps_its_value_far_from_now(org: Organization) -> None:
    """The stored timestamp is the one sent, not the server time (within the ballpark)."""
    realm_id = await new_realm(org.alice)
    vlob_id = new_id()
    timestamp = now().add(-BALLPARK + 60)
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, b"v1", timestamp) == OK
        assert (await vlob_read(conn, vlob_id))["timestamp"] == timestamp


@pytest.mark.parametrize("drift", [-BALLPARK - 5, BALLPARK + 5], ids=["past", "future"])
async def test_vlob_create_out_of_the_ballpark_is_bad_timestamp(
    org: Organization, drift: float
) -> None:
    realm_id = await new_realm(org.alice)
    vlob_id = new_id()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, timestamp=now().add(drift)) == (
            OUT_OF_DATE
        )
        assert await vlob_read(conn, vlob_id) == vlob_not_found(vlob_id)


async def test_vlob_create_in_an_unknown_realm_is_not_found(org: Organization) -> None:
    realm_id = new_id()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, new_id()) == realm_not_found(realm_id)
        # The connection is still usable (the reference dropped it).
        assert await conn.cmd("ping", ping="p") == {"status": "ok", "pong": "p"}


@pytest.mark.parametrize("encryption_revision", [0, 2])
async def test_vlob_create_with_another_encryption_revision_is_bad_encryption_revision(
    org: Organization, encryption_revision: int
) -> None:
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        reply = await vlob_create(conn, realm_id, new_id(), encryption_revision=encryption_revision)
    assert reply == BAD_ENCRYPTION_REVISION


async def test_vlob_create_twice_is_already_exists(org: Organization) -> None:
    realm_id, vlob_id = await realm_with_vlob(org.alice, blob=b"first")
    async with await org.alice.connect() as conn:
        reply = await vlob_create(conn, realm_id, vlob_id, b"second")
        assert reply == {"status": "already_exists", "reason": ""}
        assert (await vlob_read(conn, vlob_id))["blob"] == b"first"


async def test_vlob_id_is_unique_in_the_organization(org: Organization) -> None:
    _, vlob_id = await realm_with_vlob(org.alice, blob=b"first")
    other_realm = await new_realm(org.bob)
    async with await org.bob.connect() as conn:
        reply = await vlob_create(conn, other_realm, vlob_id, b"second")
        assert reply == {"status": "already_exists", "reason": ""}
        assert await vlob_read(conn, vlob_id) == NOT_ALLOWED
        poll_reply = await conn.cmd("vlob_poll_changes", realm_id=other_realm, last_checkpoint=0)
        assert poll_reply == {"status": "ok", "changes": {}, "current_checkpoint": 0}


# vlob_update


async def test_vlob_update_appends_a_version_by_its_author(org: Organization) -> None:
    _, vlob_id = await realm_with_vlob(org.alice, {org.bob: RealmRole.CONTRIBUTOR})
    timestamp = now()
    async with await org.bob.connect() as conn:
        assert await vlob_update(conn, vlob_id, 2, b"v2 by bob", timestamp) == OK
        assert await vlob_read(conn, vlob_id) == read_reply(
            2, b"v2 by bob", "bob@desktop", timestamp
        )
        assert (await vlob_read(conn, vlob_id, version=1))["author"] == "alice@laptop"


@pytest.mark.parametrize("version", [1, 3, 10])
async def test_vlob_update_with_another_version_than_the_next_one_is_bad_version(
    org: Organization, version: int
) -> None:
    _, vlob_id = await realm_with_vlob(org.alice, blob=b"v1")
    async with await org.alice.connect() as conn:
        assert await vlob_update(conn, vlob_id, version) == BAD_VERSION
        assert (await vlob_read(conn, vlob_id))["version"] == 1


async def test_vlob_update_with_version_0_is_bad_message(org: Organization) -> None:
    _, vlob_id = await realm_with_vlob(org.alice)
    async with await org.alice.connect() as conn:
        reply = await vlob_update(conn, vlob_id, 0)
    assert reply["status"] == "bad_message"


async def test_vlob_update_before_the_previous_version_is_bad_timestamp(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    vlob_id, created = new_id(), now()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, b"v1", created) == OK
        reply = await vlob_update(conn, vlob_id, 2, b"v2", created.add(-0.000001))
        assert reply == {"status": "bad_timestamp"}
        assert (await vlob_read(conn, vlob_id))["version"] == 1


async def test_vlob_update_at_the_timestamp_of_the_previous_version_is_accepted(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    vlob_id, created = new_id(), now()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, b"v1", created) == OK
        assert await vlob_update(conn, vlob_id, 2, b"v2", created) == OK
        assert await vlob_read(conn, vlob_id) == read_reply(2, b"v2", "alice@laptop", created)


@pytest.mark.parametrize("drift", [-BALLPARK - 5, BALLPARK + 5], ids=["past", "future"])
async def test_vlob_update_out_of_the_ballpark_is_bad_timestamp_out_of_date(
    org: Organization, drift: float
) -> None:
    _, vlob_id = await realm_with_vlob(org.alice)
    async with await org.alice.connect() as conn:
        assert await vlob_update(conn, vlob_id, 2, timestamp=now().add(drift)) == OUT_OF_DATE


async def test_vlob_update_checks_the_ballpark_before_the_vlob(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        reply = await vlob_update(conn, new_id(), 2, timestamp=now().add(BALLPARK + 5))
    assert reply == OUT_OF_DATE


async def test_vlob_update_of_an_unknown_vlob_is_not_found(org: Organization) -> None:
    vlob_id = new_id()
    async with await org.alice.connect() as conn:
        assert await vlob_update(conn, vlob_id, 2) == vlob_not_found(vlob_id)


@pytest.mark.parametrize("encryption_revision", [0, 2])
async def test_vlob_update_with_another_encryption_revision_is_bad_encryption_revision(
    org: Organization, encryption_revision: int
) -> None:
    _, vlob_id = await realm_with_vlob(org.alice)
    async with await org.alice.connect() as conn:
        reply = await vlob_update(conn, vlob_id, 2, encryption_revision=encryption_revision)
    assert reply == BAD_ENCRYPTION_REVISION


# vlob_poll_changes


async def test_vlob_poll_changes_of_a_new_realm(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    assert await poll(org.alice, realm_id, 0) == {
        "status": "ok",
        "changes": {},
        "current_checkpoint": 0,
    }


async def changed_realm(org: Organization) -> tuple[ID, ID, ID]:
    """Checkpoints: 1 = create a, 2 = create b, 3 = update a to v2, 4 = update a to v3."""
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    a, b = new_id(), new_id()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, a) == OK
        assert await vlob_create(conn, realm_id, b) == OK
        assert await vlob_update(conn, a, 2) == OK
        assert await vlob_update(conn, a, 3) == OK
    return realm_id, a, b


@pytest.mark.parametrize(
    ("last_checkpoint", "expected"),
    [(-10, "ab"), (-1, "ab"), (0, "ab"), (1, "ab"), (2, "a"), (3, "a"), (4, ""), (1000, "")],
)
async def test_vlob_poll_changes_after_a_checkpoint(
    org: Organization, last_checkpoint: int, expected: str
) -> None:
    realm_id, a, b = await changed_realm(org)
    changes = {"a": {a: 3}, "b": {b: 1}}
    assert await poll(org.bob, realm_id, last_checkpoint) == {
        "status": "ok",
        "changes": {k: v for name in expected for k, v in changes[name].items()},
        "current_checkpoint": 4,
    }


async def test_vlob_poll_changes_keys_are_uuids(org: Organization) -> None:
    realm_id, a, b = await changed_realm(org)
    reply = await poll(org.alice, realm_id, 0)
    assert all(isinstance(key, ID) for key in reply["changes"])
    assert set(reply["changes"]) == {a, b}


async def test_vlob_poll_changes_only_counts_its_realm(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    other = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, other, new_id()) == OK
    assert await poll(org.alice, realm_id, 0) == {
        "status": "ok",
        "changes": {},
        "current_checkpoint": 0,
    }


async def test_vlob_poll_changes_of_an_unknown_realm_is_not_found(org: Organization) -> None:
    realm_id = new_id()
    assert await poll(org.alice, realm_id, 0) == realm_not_found(realm_id)


# vlob_list_versions


async def test_vlob_list_versions(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.CONTRIBUTOR})
    vlob_id, t1, t2 = new_id(), now().add(-5), now()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id, b"v1", t1) == OK
    async with await org.bob.connect() as conn:
        assert await vlob_update(conn, vlob_id, 2, b"v2", t2) == OK
    reply = await list_versions(org.alice, vlob_id)
    assert reply == {
        "status": "ok",
        "versions": {1: [t1, "alice@laptop"], 2: [t2, "bob@desktop"]},
    }
    assert all(type(version) is int for version in reply["versions"])


async def test_vlob_list_versions_of_an_unknown_vlob_is_not_found(org: Organization) -> None:
    vlob_id = new_id()
    assert await list_versions(org.alice, vlob_id) == vlob_not_found(vlob_id)


# Roles


@pytest.mark.parametrize("role", WRITE_ROLES, ids=lambda r: r.value.lower())
async def test_vlob_writers_can_create_and_update(org: Organization, role: RealmRole) -> None:
    realm_id = await new_realm(org.alice, {org.bob: role})
    vlob_id = new_id()
    async with await org.bob.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == OK
        assert await vlob_update(conn, vlob_id, 2) == OK


async def test_vlob_reader_cannot_create_or_update(org: Organization) -> None:
    realm_id, vlob_id = await realm_with_vlob(org.alice, {org.bob: RealmRole.READER})
    async with await org.bob.connect() as conn:
        assert await vlob_create(conn, realm_id, new_id()) == NOT_ALLOWED
        assert await vlob_update(conn, vlob_id, 2) == NOT_ALLOWED
    assert (await read_by(org.alice, vlob_id))["version"] == 1


async def test_vlob_reader_can_read_poll_and_list(org: Organization) -> None:
    realm_id, vlob_id = await realm_with_vlob(org.alice, {org.bob: RealmRole.READER})
    assert (await read_by(org.bob, vlob_id))["status"] == "ok"
    assert (await poll(org.bob, realm_id, 0))["changes"] == {vlob_id: 1}
    assert (await list_versions(org.bob, vlob_id))["status"] == "ok"


async def test_vlob_commands_by_a_non_member_are_not_allowed(org: Organization) -> None:
    realm_id, vlob_id = await realm_with_vlob(org.alice)
    async with await org.bob.connect() as conn:
        assert await vlob_create(conn, realm_id, new_id()) == NOT_ALLOWED
        assert await vlob_read(conn, vlob_id) == NOT_ALLOWED
        assert await vlob_update(conn, vlob_id, 2) == NOT_ALLOWED
        reply = await conn.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0)
        assert reply == NOT_ALLOWED
        assert await conn.cmd("vlob_list_versions", vlob_id=vlob_id) == NOT_ALLOWED


async def test_vlob_commands_by_a_removed_member_are_not_allowed(org: Organization) -> None:
    realm_id, vlob_id = await realm_with_vlob(org.alice, {org.bob: RealmRole.CONTRIBUTOR})
    async with await org.alice.connect() as conn:
        assert await update_roles(conn, org.alice, realm_id, "bob", None) == OK
    async with await org.bob.connect() as conn:
        assert await vlob_read(conn, vlob_id) == NOT_ALLOWED
        assert await vlob_update(conn, vlob_id, 2) == NOT_ALLOWED


async def test_vlob_outsider_contributor_can_write(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.mallory: RealmRole.CONTRIBUTOR})
    vlob_id = new_id()
    async with await org.mallory.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == OK
    assert (await read_by(org.alice, vlob_id))["author"] == "mallory@phone"


# realm.vlobs_updated events


async def test_vlob_writes_are_announced_to_the_other_members(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    bob_ws = await subscribed_ws(org.bob)
    vlob_id = new_id()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == OK
        assert await vlob_update(conn, vlob_id, 2) == OK
    assert await listen(bob_ws) == vlobs_updated(realm_id, 1, vlob_id, 1)
    assert await listen(bob_ws) == vlobs_updated(realm_id, 2, vlob_id, 2)
    await bob_ws.close()


async def test_vlob_writes_are_not_announced_to_the_author_device(
    server: RunningServer, org: Organization
) -> None:
    realm_id = await new_realm(org.alice)
    alice_ws = await subscribed_ws(org.alice)
    vlob_id = new_id()
    seen = dispatched(server, RealmVlobsUpdatedEvent, src_id=vlob_id, src_version=2)
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == OK
        assert await vlob_update(conn, vlob_id, 2) == OK
    await wait_set(seen)
    await assert_no_event(alice_ws)
    await alice_ws.close()


async def test_vlob_writes_are_announced_to_another_device_of_the_author(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        alice2 = await create_device(conn, org.alice, "phone")
    alice2_ws = await subscribed_ws(alice2)
    vlob_id = new_id()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == OK
    assert await listen(alice2_ws) == vlobs_updated(realm_id, 1, vlob_id, 1)
    await alice2_ws.close()


async def test_vlob_writes_are_not_announced_to_non_members(
    server: RunningServer, org: Organization
) -> None:
    realm_id = await new_realm(org.alice)
    bob_ws = await subscribed_ws(org.bob)
    vlob_id = new_id()
    seen = dispatched(server, RealmVlobsUpdatedEvent, src_id=vlob_id)
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == OK
    await wait_set(seen)
    await assert_no_event(bob_ws)
    await bob_ws.close()


async def test_vlob_events_follow_role_changes_after_subscription(
    server: RunningServer, org: Organization
) -> None:
    realm_id = await new_realm(org.alice)
    bob_ws = await subscribed_ws(org.bob)
    first, second = new_id(), new_id()
    async with await org.alice.connect() as conn:
        assert await update_roles(conn, org.alice, realm_id, "bob", RealmRole.READER) == OK
        assert await vlob_create(conn, realm_id, first) == OK
        assert await update_roles(conn, org.alice, realm_id, "bob", None) == OK
        seen = dispatched(server, RealmVlobsUpdatedEvent, src_id=second)
        assert await vlob_create(conn, realm_id, second) == OK
    await wait_set(seen)
    assert await listen(bob_ws) == roles_updated(realm_id, RealmRole.READER)
    assert await listen(bob_ws) == vlobs_updated(realm_id, 1, first, 1)
    assert await listen(bob_ws) == roles_updated(realm_id, None)
    await assert_no_event(bob_ws)
    await bob_ws.close()


async def test_vlob_events_reach_the_creator_of_a_realm_created_after_subscription(
    org: Organization,
) -> None:
    async with await org.alice.connect() as conn:
        alice2 = await create_device(conn, org.alice, "phone")
    alice_ws = await subscribed_ws(org.alice)
    realm_id = await new_realm(org.alice)
    vlob_id = new_id()
    async with await alice2.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == OK
    assert await listen(alice_ws) == roles_updated(realm_id, RealmRole.OWNER)
    assert await listen(alice_ws) == vlobs_updated(realm_id, 1, vlob_id, 1)
    await alice_ws.close()


# Organizations are isolated


async def test_ids_of_another_organization_are_not_found(
    server: RunningServer, org: Organization
) -> None:
    realm_id, vlob_id = await realm_with_vlob(org.alice)
    block_id = new_id()
    async with await org.alice.connect() as conn:
        reply = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=b"b")
        assert reply == OK
    other = await create_org(server)
    async with await other.alice.connect() as conn:
        for cmd in ("realm_status", "realm_stats", "realm_get_role_certificates"):
            assert await conn.cmd(cmd, realm_id=realm_id) == realm_not_found(realm_id)
        assert await update_roles(conn, other.alice, realm_id, "bob", RealmRole.READER) == (
            realm_not_found(realm_id)
        )
        assert await vlob_create(conn, realm_id, new_id()) == realm_not_found(realm_id)
        assert await vlob_read(conn, vlob_id) == vlob_not_found(vlob_id)
        assert await vlob_update(conn, vlob_id, 2) == vlob_not_found(vlob_id)
        assert await conn.cmd("vlob_list_versions", vlob_id=vlob_id) == vlob_not_found(vlob_id)
        reply = await conn.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0)
        assert reply == realm_not_found(realm_id)
        assert await conn.cmd("block_read", block_id=block_id) == {"status": "not_found"}
        reply = await conn.cmd("block_create", block_id=new_id(), realm_id=realm_id, block=b"")
        assert reply == {"status": "not_found"}


async def test_ids_of_another_organization_can_be_reused(
    server: RunningServer, org: Organization
) -> None:
    realm_id, vlob_id = await realm_with_vlob(org.alice, blob=b"mine")
    other = await create_org(server)
    async with await other.alice.connect() as conn:
        assert await create_realm(conn, other.alice, realm_id) == realm_id
        assert await vlob_create(conn, realm_id, vlob_id, b"theirs") == OK
        assert (await vlob_read(conn, vlob_id))["blob"] == b"theirs"
    assert (await read_by(org.alice, vlob_id))["blob"] == b"mine"


# The reference's own request frames (vectors/commands.json)

VECTORS = VECTORS_DIR / "commands.json"
VECTOR_REALM_ID = ID.from_hex("a0000000-0000-4000-8000-00000000000a")
VECTOR_VLOB_ID = ID.from_hex("c0000000-0000-4000-8000-00000000000c")
FORGED = {
    "status": "invalid_certification",
    "reason": "Invalid certification data (Signature was forged or corrupt).",
}


@pytest.mark.skipif(not VECTORS.exists(), reason="protocol vectors not available")
async def test_reference_request_frames_are_understood(org: Organization) -> None:
    """Every example request frame, sent byte for byte in a realm with the ids they use
    (their certificates are placeholders and their timestamps are from 2020)."""
    examples = json.loads(VECTORS.read_text())["examples"]
    await new_realm(org.alice, realm_id=VECTOR_REALM_ID)
    timestamp = now()
    realm_nim = not_in_maintenance(VECTOR_REALM_ID)
    expected: dict[int, Any] = {
        0: FORGED,
        1: {
            "status": "ok",
            "in_maintenance": False,
            "maintenance_type": None,
            "maintenance_started_on": None,
            "maintenance_started_by": None,
            "encryption_revision": 1,
        },
        3: {"status": "ok", "blocks_size": 0, "vlobs_size": 20},
        6: FORGED,
        7: OUT_OF_DATE,
        8: realm_nim,
        9: OUT_OF_DATE,
        10: read_reply(1, b"<encrypted manifest>", "alice@laptop", timestamp),
        11: BAD_VERSION,
        12: OUT_OF_DATE,
        13: {"status": "ok", "changes": {VECTOR_VLOB_ID: 1}, "current_checkpoint": 1},
        14: {"status": "ok", "versions": {1: [timestamp, "alice@laptop"]}},
        15: realm_nim,
        16: realm_nim,
        17: OK,
        18: {"status": "ok", "block": b"<encrypted block>"},
    }
    async with await org.alice.connect() as conn:
        reply = await vlob_create(
            conn, VECTOR_REALM_ID, VECTOR_VLOB_ID, b"<encrypted manifest>", timestamp
        )
        assert reply == OK
        for index, example in enumerate(examples):
            if "request" not in example:
                continue
            reply = await conn.send_raw(bytes.fromhex(example["request"]["msgpack_hex"]))
            if index in (4, 5):  # realm_get_role_certificates, with and without `since`
                assert reply["status"] == "ok"
                assert len(reply["certificates"]) == 1
            else:
                assert reply == expected[index], (index, example["command"])
