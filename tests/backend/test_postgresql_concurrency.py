"""Concurrent commands on the PostgreSQL storage: each runs on its own database connection,
so only the storage's locks and constraints keep them apart (the memory storage is atomic
on the event loop by construction)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.api.codec import ID
from parsec_server.api.ids import RealmRole
from parsec_server.backend.config import PostgreSQLBlockstoreConfig
from parsec_server.backend.realm_types import NewMessage, RealmBadOutcome, RoleGrant
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from tests.backend.common import TIMEOUT
from tests.backend.realm_helpers import (
    BAD_VERSION,
    OK,
    new_id,
    new_realm,
    now,
    role_certificate,
    update_roles,
    vlob_create,
    vlob_update,
)
from tests.fixtures.servers import (
    Organization,
    RunningServer,
    create_org,
    make_config,
    running_server,
)

RACES = 20
CONCURRENT_BLOCKS = 100


@pytest.fixture
async def pg_server(migrated_postgresql_url: str) -> AsyncIterator[RunningServer]:
    # The default pool sizes of `parsec backend run`, and the POSTGRESQL blockstore, which
    # shares the pool with the metadata.
    config = make_config(
        migrated_postgresql_url,
        blockstore=PostgreSQLBlockstoreConfig(),
        db_min_connections=5,
        db_max_connections=7,
    )
    async with running_server(config) as server:
        yield server


@pytest.fixture
async def pg_org(pg_server: RunningServer) -> Organization:
    return await create_org(pg_server)


@pytest.fixture
async def raw_db(migrated_postgresql_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(migrated_postgresql_url)
    try:
        yield conn
    finally:
        await conn.close()


_SQL_LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


async def wait_for_lock_waiters(conn: asyncpg.Connection, count: int) -> None:
    """Until `count` backends of the database wait for a lock."""
    async with asyncio.timeout(TIMEOUT):
        while await conn.fetchval(_SQL_LOCK_WAITERS) < count:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.01)


async def test_concurrent_vlob_updates_to_one_version_give_one_ok_and_one_bad_version(
    pg_org: Organization,
) -> None:
    alice, bob = pg_org.alice, pg_org.bob
    realm_id = await new_realm(alice, {bob: RealmRole.CONTRIBUTOR})
    vlob_id = new_id()
    async with await alice.connect() as alice_conn, await bob.connect() as bob_conn:
        assert await vlob_create(alice_conn, realm_id, vlob_id) == OK
        for version in range(2, RACES + 2):
            replies = await asyncio.gather(
                vlob_update(alice_conn, vlob_id, version, b"alice"),
                vlob_update(bob_conn, vlob_id, version, b"bob"),
            )
            assert sorted(replies, key=lambda r: r["status"]) == [BAD_VERSION, OK], version
        versions = await alice_conn.cmd("vlob_list_versions", vlob_id=vlob_id)
        assert sorted(versions["versions"]) == list(range(1, RACES + 2))
        changes = await alice_conn.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0)
        assert changes == {
            "status": "ok",
            "changes": {vlob_id: RACES + 1},
            "current_checkpoint": RACES + 1,
        }


async def test_concurrent_vlob_creates_of_one_id_in_two_realms_give_one_already_exists(
    pg_org: Organization,
) -> None:
    """Two realms, two realm locks: only the organization-wide unique vlob id decides."""
    alice, bob = pg_org.alice, pg_org.bob
    alice_realm, bob_realm = await asyncio.gather(new_realm(alice), new_realm(bob))
    async with await alice.connect() as alice_conn, await bob.connect() as bob_conn:
        for _ in range(RACES):
            vlob_id = new_id()
            replies = await asyncio.gather(
                vlob_create(alice_conn, alice_realm, vlob_id, b"alice"),
                vlob_create(bob_conn, bob_realm, vlob_id, b"bob"),
            )
            assert sorted(replies, key=lambda r: r["status"]) == [
                {"status": "already_exists", "reason": ""},
                OK,
            ]


async def test_vlob_update_waiting_for_a_revocation_of_its_author_is_not_allowed(
    pg_server: RunningServer, pg_org: Organization, raw_db: asyncpg.Connection
) -> None:
    """The update's statement reads the roles before the revocation commits, and must not
    write once it has: the changed realm row makes it check again."""
    alice, bob = pg_org.alice, pg_org.bob
    realm_id = await new_realm(alice, {bob: RealmRole.CONTRIBUTOR})
    vlob_id = new_id()
    async with await bob.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == OK
    app = pg_server.app
    async with raw_db.transaction():
        # 1. Hold bob's user row: the revocation will stop at its message, with the realm
        #    row updated and locked.
        await raw_db.execute(
            "SELECT 1 FROM user_ u JOIN organization o ON o._id = u.organization "
            "WHERE o.organization_id = $1 AND u.user_id = $2 FOR NO KEY UPDATE OF u",
            pg_org.organization_id,
            bob.user_id,
        )
        timestamp = now()
        revocation = asyncio.create_task(
            app.realm.update_roles(
                pg_org.organization_id,
                RoleGrant(
                    realm_id=realm_id.uuid,
                    user_id=bob.user_id,
                    role=None,
                    certificate=role_certificate(alice, realm_id, bob.user_id, None, timestamp),
                    granted_by=alice.device_id,
                    granted_on=timestamp,
                ),
                b"you are out",
            )
        )
        await wait_for_lock_waiters(raw_db, 1)
        # 2. Bob's update reads the roles (still CONTRIBUTOR), then waits for the realm row.
        update = asyncio.create_task(
            app.vlob.update(
                pg_org.organization_id, bob.device_id, 1, vlob_id.uuid, 2, now(), b"late"
            )
        )
        await wait_for_lock_waiters(raw_db, 2)
    # 3. The revocation commits first, then the update goes on.
    assert await revocation == NewMessage(bob.user_id, 1)
    assert await update == RealmBadOutcome.NOT_ALLOWED
    async with await alice.connect() as conn:
        versions = await conn.cmd("vlob_list_versions", vlob_id=vlob_id)
        assert list(versions["versions"]) == [1]


async def test_concurrent_block_creates_all_complete_with_the_default_pool(
    pg_org: Organization,
) -> None:
    alice = pg_org.alice
    realm_id = await new_realm(alice)
    blocks = {new_id(): f"block {i}".encode() * 100 for i in range(CONCURRENT_BLOCKS)}
    async with AsyncExitStack() as stack:
        conns: list[BackendConnection] = await asyncio.gather(*(alice.connect() for _ in blocks))
        for conn in conns:
            stack.push_async_callback(conn.close)
        async with asyncio.timeout(30):
            replies = await asyncio.gather(
                *(
                    conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=data)
                    for conn, (block_id, data) in zip(conns, blocks.items(), strict=True)
                )
            )
        assert replies == [OK] * CONCURRENT_BLOCKS
        async with asyncio.timeout(30):
            read = await asyncio.gather(
                *(
                    conn.cmd("block_read", block_id=block_id)
                    for conn, block_id in zip(conns, blocks, strict=True)
                )
            )
        assert read == [{"status": "ok", "block": data} for data in blocks.values()]


async def _share_with_message(
    owner: LocalDevice, realm_id: ID, user_id: str, message: bytes
) -> None:
    async with await owner.connect() as conn:
        reply = await update_roles(conn, owner, realm_id, user_id, RealmRole.READER, message)
        assert reply == OK


async def test_concurrent_messages_to_one_user_get_distinct_indexes(
    pg_org: Organization,
) -> None:
    alice, bob, mallory = pg_org.alice, pg_org.bob, pg_org.mallory
    sent: set[bytes] = set()
    for race in range(RACES // 2):
        # Two realms, hence two realm locks: only the recipient's lock orders the messages.
        alice_realm, bob_realm = await asyncio.gather(new_realm(alice), new_realm(bob))
        from_alice, from_bob = f"alice {race}".encode(), f"bob {race}".encode()
        await asyncio.gather(
            _share_with_message(alice, alice_realm, mallory.user_id, from_alice),
            _share_with_message(bob, bob_realm, mallory.user_id, from_bob),
        )
        sent |= {from_alice, from_bob}
    async with await mallory.connect() as conn:
        reply = await conn.cmd("message_get", offset=0)
    assert reply["status"] == "ok"
    messages = reply["messages"]
    assert [m["count"] for m in messages] == list(range(1, len(sent) + 1))
    assert {m["body"] for m in messages} == sent


async def test_concurrent_role_grants_in_one_realm_keep_one_current_role(
    pg_org: Organization,
) -> None:
    """Two owners granting a role to the same user at once: one is already_granted."""
    alice, bob, mallory = pg_org.alice, pg_org.bob, pg_org.mallory
    realm_id = await new_realm(alice, {bob: RealmRole.OWNER})
    async with await alice.connect() as alice_conn, await bob.connect() as bob_conn:
        replies = await asyncio.gather(
            update_roles(alice_conn, alice, realm_id, mallory.user_id, RealmRole.READER),
            update_roles(bob_conn, bob, realm_id, mallory.user_id, RealmRole.READER),
        )
        assert sorted(r["status"] for r in replies) == ["already_granted", "ok"]
