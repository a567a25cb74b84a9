"""Block commands (protocol/50-block-blockstore.md §1-2): block_create, block_read, and the
sizes they add to realm and organization stats."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from parsec_server.api.codec import ID
from parsec_server.api.ids import RealmRole
from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from tests.backend.common import wait_set
from tests.backend.realm_helpers import (
    IN_MAINTENANCE,
    NOT_ALLOWED,
    OK,
    new_id,
    new_realm,
    start_maintenance_alone,
    update_roles,
    vlob_create,
    vlob_update,
)
from tests.fixtures.servers import Organization, RunningServer

NOT_FOUND = {"status": "not_found"}
ALREADY_EXISTS = {"status": "already_exists"}
MAX_BLOCK_SIZE = 1024 * 1024  # the 1 MiB bin limit of the request decoder


async def block_create(
    conn: BackendConnection, realm_id: ID, data: bytes, block_id: ID | None = None
) -> dict[str, Any]:
    return await conn.cmd(
        "block_create", block_id=block_id or new_id(), realm_id=realm_id, block=data
    )


async def block_read(device: LocalDevice, block_id: ID) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd("block_read", block_id=block_id)


async def realm_with_block(
    org: Organization, data: bytes = b"<block>", members: dict[LocalDevice, RealmRole] | None = None
) -> tuple[ID, ID]:
    realm_id = await new_realm(org.alice, members)
    block_id = new_id()
    async with await org.alice.connect() as conn:
        assert await block_create(conn, realm_id, data, block_id) == OK
    return realm_id, block_id


async def test_block_create_then_read(org: Organization) -> None:
    _, block_id = await realm_with_block(org, b"\x00encrypted\xff")
    assert await block_read(org.alice, block_id) == {"status": "ok", "block": b"\x00encrypted\xff"}


async def test_block_of_1_mib(org: Organization) -> None:
    data = bytes(range(256)) * (MAX_BLOCK_SIZE // 256)
    assert len(data) == MAX_BLOCK_SIZE
    _, block_id = await realm_with_block(org, data)
    assert await block_read(org.alice, block_id) == {"status": "ok", "block": data}


async def test_empty_block(org: Organization) -> None:
    _, block_id = await realm_with_block(org, b"")
    assert await block_read(org.alice, block_id) == {"status": "ok", "block": b""}


async def test_block_read_of_an_unknown_block_is_not_found(org: Organization) -> None:
    assert await block_read(org.alice, new_id()) == NOT_FOUND


async def test_block_create_in_an_unknown_realm_is_not_found(org: Organization) -> None:
    block_id = new_id()
    async with await org.alice.connect() as conn:
        assert await block_create(conn, new_id(), b"x", block_id) == NOT_FOUND
    assert await block_read(org.alice, block_id) == NOT_FOUND


async def test_block_create_twice_is_already_exists_and_keeps_the_first(
    org: Organization,
) -> None:
    realm_id, block_id = await realm_with_block(org, b"first")
    async with await org.alice.connect() as conn:
        assert await block_create(conn, realm_id, b"second", block_id) == ALREADY_EXISTS
    assert await block_read(org.alice, block_id) == {"status": "ok", "block": b"first"}


async def test_block_id_is_unique_in_the_organization(org: Organization) -> None:
    _, block_id = await realm_with_block(org, b"first")
    other_realm = await new_realm(org.bob)
    async with await org.bob.connect() as conn:
        assert await block_create(conn, other_realm, b"second", block_id) == ALREADY_EXISTS
        assert await conn.cmd("block_read", block_id=block_id) == NOT_ALLOWED


@pytest.mark.parametrize(
    "role", [RealmRole.OWNER, RealmRole.MANAGER, RealmRole.CONTRIBUTOR], ids=lambda r: r.value
)
async def test_block_writers_can_create(org: Organization, role: RealmRole) -> None:
    realm_id = await new_realm(org.alice, {org.bob: role})
    block_id = new_id()
    async with await org.bob.connect() as conn:
        assert await block_create(conn, realm_id, b"by bob", block_id) == OK
    assert await block_read(org.alice, block_id) == {"status": "ok", "block": b"by bob"}


async def test_block_reader_can_read_but_not_create(org: Organization) -> None:
    realm_id, block_id = await realm_with_block(org, b"data", {org.mallory: RealmRole.READER})
    assert await block_read(org.mallory, block_id) == {"status": "ok", "block": b"data"}
    async with await org.mallory.connect() as conn:
        assert await block_create(conn, realm_id, b"x") == NOT_ALLOWED


async def test_block_commands_by_a_non_member_are_not_allowed(org: Organization) -> None:
    realm_id, block_id = await realm_with_block(org)
    assert await block_read(org.bob, block_id) == NOT_ALLOWED
    async with await org.bob.connect() as conn:
        new_block = new_id()
        assert await block_create(conn, realm_id, b"x", new_block) == NOT_ALLOWED
    assert await block_read(org.alice, new_block) == NOT_FOUND


async def test_block_read_by_a_removed_member_is_not_allowed(org: Organization) -> None:
    realm_id, block_id = await realm_with_block(org, members={org.bob: RealmRole.READER})
    async with await org.alice.connect() as conn:
        assert await update_roles(conn, org.alice, realm_id, "bob", None) == OK
    assert await block_read(org.bob, block_id) == NOT_ALLOWED


async def test_block_commands_during_maintenance_are_in_maintenance(org: Organization) -> None:
    realm_id, block_id = await realm_with_block(org)
    await start_maintenance_alone(org.alice, realm_id)
    assert await block_read(org.alice, block_id) == IN_MAINTENANCE
    async with await org.alice.connect() as conn:
        assert await block_create(conn, realm_id, b"x") == IN_MAINTENANCE


async def test_block_sizes_in_realm_stats(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        for size in (0, 10, 1000):
            assert await block_create(conn, realm_id, b"b" * size) == OK
        assert await conn.cmd("realm_stats", realm_id=realm_id) == {
            "status": "ok",
            "blocks_size": 1010,
            "vlobs_size": 0,
        }


async def organization_stats(server: RunningServer, organization_id: str) -> dict[str, Any]:
    admin = await server.admin()
    try:
        return await admin.cmd("organization_stats", organization_id=organization_id)
    finally:
        await admin.close()


async def test_organization_stats_count_blocks_and_vlob_versions(
    server: RunningServer, org: Organization
) -> None:
    assert await organization_stats(server, org.organization_id) == {
        "status": "ok",
        "users": 3,
        "data_size": 0,
        "metadata_size": 0,
    }
    first = await new_realm(org.alice)
    second = await new_realm(org.bob)
    vlob_id = new_id()
    async with await org.alice.connect() as conn:
        assert await block_create(conn, first, b"b" * 100) == OK
        assert await block_create(conn, first, b"b" * 23) == OK
        assert await vlob_create(conn, first, vlob_id, b"v" * 7) == OK
        assert await vlob_update(conn, vlob_id, 2, b"v" * 8) == OK
    async with await org.bob.connect() as conn:
        assert await block_create(conn, second, b"b" * 1000) == OK
        assert await vlob_create(conn, second, new_id(), b"v" * 30) == OK
    assert await organization_stats(server, org.organization_id) == {
        "status": "ok",
        "users": 3,
        "data_size": 1123,
        "metadata_size": 45,
    }


# Access changes during the upload: the metadata insert checks again


class GatedBlockStore(BlockStore):
    """Wraps a store: a write announces itself (`writing`) then waits for `release`."""

    def __init__(self, store: BlockStore) -> None:
        self._store = store
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        self.writing.set()
        await self.release.wait()
        return await self._store.create(organization_id, block_id, data)

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        return await self._store.read(organization_id, block_id)

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        return await self._store.delete(organization_id, block_id)


@pytest.fixture
async def gated_blockstore(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[GatedBlockStore]:
    gated = GatedBlockStore(server.app.block.blockstore)
    monkeypatch.setattr(server.app.block, "blockstore", gated)
    yield gated
    gated.release.set()  # never leave an upload waiting


async def block_create_while(
    gated: GatedBlockStore, device: LocalDevice, realm_id: ID, block_id: ID, change: Awaitable[None]
) -> dict[str, Any]:
    """block_create by `device`, with `change` made while its data is being written."""
    async with await device.connect() as conn:
        upload = asyncio.create_task(block_create(conn, realm_id, b"slow", block_id))
        await wait_set(gated.writing)
        await change
        gated.release.set()
        return await asyncio.wait_for(upload, 10)


async def blocks_size(device: LocalDevice, realm_id: ID) -> int:
    async with await device.connect() as conn:
        reply = await conn.cmd("realm_stats", realm_id=realm_id)
    assert reply["status"] == "ok", reply
    size: int = reply["blocks_size"]
    return size


async def set_role_by_alice(org: Organization, realm_id: ID, role: RealmRole | None) -> None:
    async with await org.alice.connect() as conn:
        assert await update_roles(conn, org.alice, realm_id, "bob", role) == OK


@pytest.mark.parametrize("new_role", [None, RealmRole.READER], ids=["removed", "reader"])
async def test_block_create_by_a_writer_who_loses_write_access_during_the_upload_is_not_allowed(
    org: Organization, gated_blockstore: GatedBlockStore, new_role: RealmRole | None
) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.CONTRIBUTOR})
    block_id = new_id()
    change = set_role_by_alice(org, realm_id, new_role)
    reply = await block_create_while(gated_blockstore, org.bob, realm_id, block_id, change)
    assert reply == NOT_ALLOWED
    assert await block_read(org.alice, block_id) == NOT_FOUND
    assert await blocks_size(org.alice, realm_id) == 0


async def test_block_create_when_the_realm_enters_maintenance_during_the_upload_is_in_maintenance(
    org: Organization, gated_blockstore: GatedBlockStore
) -> None:
    realm_id = await new_realm(org.alice)
    block_id = new_id()
    change = start_maintenance_alone(org.alice, realm_id)
    reply = await block_create_while(gated_blockstore, org.alice, realm_id, block_id, change)
    assert reply == IN_MAINTENANCE
    assert await blocks_size(org.alice, realm_id) == 0


async def test_block_create_by_a_writer_who_keeps_write_access_during_the_upload(
    org: Organization, gated_blockstore: GatedBlockStore
) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.CONTRIBUTOR})
    block_id = new_id()
    change = set_role_by_alice(org, realm_id, RealmRole.MANAGER)
    reply = await block_create_while(gated_blockstore, org.bob, realm_id, block_id, change)
    assert reply == OK
    assert await block_read(org.alice, block_id) == {"status": "ok", "block": b"slow"}
