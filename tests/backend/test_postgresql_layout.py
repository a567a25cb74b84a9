"""What our server writes in Parsec 2.0.0's PostgreSQL layout and what that server relies on
when it reads the database back (docs/plans/drop-in.md §5.7, docs/storage-postgresql.md),
and the rows written by it that we must read (a device without a stored verify key)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.api.codec import ID
from parsec_server.api.ids import RealmRole
from parsec_server.client.device import LocalDevice
from tests.backend.realm_helpers import (
    OK,
    new_id,
    new_realm,
    start_reencryption,
    update_roles,
    vlob_create,
    vlob_read,
    vlob_update,
)
from tests.fixtures.servers import (
    Organization,
    RunningServer,
    create_org,
    make_config,
    running_server,
)

PARTICIPANTS = {"alice": b"<key for alice>", "bob": b"<key for bob>"}
OLD_BLOBS = {("a", 1): b"a1", ("a", 2): b"a2", ("b", 1): b"b1"}
NEW_BLOBS = {("a", 1): b"A1 again", ("a", 2): b"A2 again", ("b", 1): b"B1 again"}


@pytest.fixture
async def pg_server(migrated_postgresql_url: str) -> AsyncIterator[RunningServer]:
    async with running_server(make_config(migrated_postgresql_url)) as server:
        yield server


@pytest.fixture
async def pg_org(pg_server: RunningServer) -> Organization:
    return await create_org(pg_server)


@pytest.fixture
async def db(migrated_postgresql_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(migrated_postgresql_url)
    try:
        yield conn
    finally:
        await conn.close()


async def realm_row(db: asyncpg.Connection, org: Organization, realm_id: ID) -> asyncpg.Record:
    return await db.fetchrow(
        "SELECT r.* FROM realm r JOIN organization o ON o._id = r.organization"
        " WHERE o.organization_id = $1 AND r.realm_id = $2",
        org.organization_id,
        realm_id.uuid,
    )


async def atoms(db: asyncpg.Connection, realm: int) -> list[dict[str, Any]]:
    """The realm's atoms, by revision then write order."""
    rows = await db.fetch(
        "SELECT ver.encryption_revision, a.* FROM vlob_atom a"
        " JOIN vlob_encryption_revision ver ON ver._id = a.vlob_encryption_revision"
        " WHERE ver.realm = $1 ORDER BY ver.encryption_revision, a._id",
        realm,
    )
    return [dict(row) for row in rows]


async def populated_realm(org: Organization) -> tuple[ID, dict[str, ID]]:
    """alice OWNER, bob READER; vlob `a` at versions 1 and 2, vlob `b` at version 1
    (blobs: OLD_BLOBS)."""
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    vlobs = {"a": new_id(), "b": new_id()}
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlobs["a"], OLD_BLOBS["a", 1]) == OK
        assert await vlob_update(conn, vlobs["a"], 2, OLD_BLOBS["a", 2]) == OK
        assert await vlob_create(conn, realm_id, vlobs["b"], OLD_BLOBS["b", 1]) == OK
    return realm_id, vlobs


async def reencrypt(alice: LocalDevice, realm_id: ID, vlobs: dict[str, ID]) -> None:
    """Re-encrypt to revision 2 with NEW_BLOBS."""
    batch = [
        {"vlob_id": vlobs[name], "version": version, "blob": blob}
        for (name, version), blob in NEW_BLOBS.items()
    ]
    async with await alice.connect() as conn:
        assert await start_reencryption(conn, realm_id, PARTICIPANTS) == OK
        reply = await conn.cmd(
            "vlob_maintenance_save_reencryption_batch",
            realm_id=realm_id,
            encryption_revision=2,
            batch=batch,
        )
        assert reply == {"status": "ok", "total": 3, "done": 3}
        reply = await conn.cmd(
            "realm_finish_reencryption_maintenance", realm_id=realm_id, encryption_revision=2
        )
        assert reply == OK


async def test_a_realm_has_its_revision_1_row_and_its_first_role(
    pg_org: Organization, db: asyncpg.Connection
) -> None:
    realm_id = await new_realm(pg_org.alice)
    realm = await realm_row(db, pg_org, realm_id)
    assert realm["encryption_revision"] == 1
    revisions = await db.fetch(
        "SELECT encryption_revision FROM vlob_encryption_revision WHERE realm = $1", realm["_id"]
    )
    assert [r["encryption_revision"] for r in revisions] == [1]
    role = await db.fetchrow(
        "SELECT rr.role::text, d.device_id FROM realm_user_role rr"
        " JOIN device d ON d._id = rr.certified_by WHERE rr.realm = $1",
        realm["_id"],
    )
    assert tuple(role) == ("OWNER", pg_org.alice.device_id)


async def test_vlob_writes_go_to_the_current_revision_with_a_contiguous_change_log(
    pg_org: Organization, db: asyncpg.Connection
) -> None:
    realm_id, vlobs = await populated_realm(pg_org)
    realm = (await realm_row(db, pg_org, realm_id))["_id"]
    written = await atoms(db, realm)
    assert [(a["encryption_revision"], a["version"], a["blob"]) for a in written] == [
        (1, 1, b"a1"),
        (1, 2, b"a2"),
        (1, 1, b"b1"),
    ]
    log = await db.fetch(
        "SELECT index, vlob_atom FROM realm_vlob_update WHERE realm = $1 ORDER BY _id", realm
    )
    assert [(u["index"], u["vlob_atom"]) for u in log] == [
        (n, a["_id"]) for n, a in enumerate(written, 1)
    ]
    registered = await db.fetch(
        "SELECT vlob_id FROM ext_vlob_id WHERE organization = $1", written[0]["organization"]
    )
    assert {r["vlob_id"] for r in registered} == {v.uuid for v in vlobs.values()}


async def test_reencryption_keeps_the_old_atoms_and_serves_their_copies(
    pg_org: Organization, db: asyncpg.Connection
) -> None:
    realm_id, vlobs = await populated_realm(pg_org)
    await reencrypt(pg_org.alice, realm_id, vlobs)
    realm = (await realm_row(db, pg_org, realm_id))["_id"]
    revisions = await db.fetch(
        "SELECT encryption_revision FROM vlob_encryption_revision WHERE realm = $1 ORDER BY 1",
        realm,
    )
    assert [r["encryption_revision"] for r in revisions] == [1, 2]
    old: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    for atom in await atoms(db, realm):
        (old if atom["encryption_revision"] == 1 else new).append(atom)
    assert [a["blob"] for a in old] == list(OLD_BLOBS.values())
    # Copies of their source: same vlob, version, author and timestamps.
    source_fields = ["organization", "vlob_id", "version", "author", "created_on", "deleted_on"]
    by_key = {(a["vlob_id"], a["version"]): a for a in old}
    assert len(new) == len(old)
    for copy in new:
        source = by_key[copy["vlob_id"], copy["version"]]
        assert [copy[f] for f in source_fields] == [source[f] for f in source_fields]
    # The change log still points at the atoms as first written.
    log = await db.fetch("SELECT vlob_atom FROM realm_vlob_update WHERE realm = $1", realm)
    assert {u["vlob_atom"] for u in log} == {a["_id"] for a in old}

    async with await pg_org.bob.connect() as conn:
        for (name, version), blob in NEW_BLOBS.items():
            reply = await vlob_read(conn, vlobs[name], version, encryption_revision=2)
            assert (reply["status"], reply["blob"]) == ("ok", blob)
        latest = await vlob_read(conn, vlobs["a"], encryption_revision=2)
        assert (latest["version"], latest["blob"]) == (2, NEW_BLOBS["a", 2])
        versions = await conn.cmd("vlob_list_versions", vlob_id=vlobs["a"])
        assert sorted(versions["versions"]) == [1, 2]


async def test_writes_after_a_reencryption_go_to_the_new_revision(
    pg_org: Organization, db: asyncpg.Connection
) -> None:
    realm_id, vlobs = await populated_realm(pg_org)
    await reencrypt(pg_org.alice, realm_id, vlobs)
    async with await pg_org.alice.connect() as conn:
        reply = await vlob_update(conn, vlobs["b"], 2, b"b2", encryption_revision=2)
        assert reply == OK
    realm = (await realm_row(db, pg_org, realm_id))["_id"]
    last = (await atoms(db, realm))[-1]
    assert (last["encryption_revision"], last["version"], last["blob"]) == (2, 2, b"b2")
    log = await db.fetch(
        "SELECT index FROM realm_vlob_update WHERE realm = $1 ORDER BY index", realm
    )
    assert [u["index"] for u in log] == [1, 2, 3, 4]


async def test_stats_count_every_revision_for_the_organization_and_the_served_one_for_the_realm(
    pg_server: RunningServer, pg_org: Organization
) -> None:
    realm_id, vlobs = await populated_realm(pg_org)
    old_size = sum(len(b) for b in OLD_BLOBS.values())
    new_size = sum(len(b) for b in NEW_BLOBS.values())
    async with await pg_org.alice.connect() as conn:
        assert await start_reencryption(conn, realm_id, PARTICIPANTS) == OK
        # During the maintenance the served blobs are the previous revision's.
        reply = await conn.cmd("realm_stats", realm_id=realm_id)
        assert reply == {"status": "ok", "blocks_size": 0, "vlobs_size": old_size}
        reply = await conn.cmd(
            "vlob_maintenance_save_reencryption_batch",
            realm_id=realm_id,
            encryption_revision=2,
            batch=[
                {"vlob_id": vlobs[name], "version": version, "blob": blob}
                for (name, version), blob in NEW_BLOBS.items()
            ],
        )
        assert reply["status"] == "ok"
        reply = await conn.cmd(
            "realm_finish_reencryption_maintenance", realm_id=realm_id, encryption_revision=2
        )
        assert reply == OK
        reply = await conn.cmd("realm_stats", realm_id=realm_id)
        assert reply == {"status": "ok", "blocks_size": 0, "vlobs_size": new_size}
    async with await pg_server.admin() as admin:
        reply = await admin.cmd("organization_stats", organization_id=pg_org.organization_id)
    assert reply["metadata_size"] == old_size + new_size


async def test_message_rows_name_their_organization_and_their_position(
    pg_org: Organization, db: asyncpg.Connection
) -> None:
    async with await pg_org.alice.connect() as conn:
        for _ in range(3):
            realm_id = await new_realm(pg_org.alice)
            reply = await update_roles(
                conn, pg_org.alice, realm_id, "bob", RealmRole.READER, b"<sharing>"
            )
            assert reply == OK
    rows = await db.fetch(
        "SELECT m.index, o.organization_id FROM message m"
        " JOIN user_ u ON u._id = m.recipient JOIN organization o ON o._id = m.organization"
        " WHERE u.organization = m.organization AND u.user_id = 'bob'"
        "   AND o.organization_id = $1 ORDER BY m._id",
        pg_org.organization_id,
    )
    assert [tuple(r) for r in rows] == [(n, pg_org.organization_id) for n in (1, 2, 3)]


async def test_users_and_devices_carry_what_parsec_2_reads(
    pg_org: Organization, db: asyncpg.Connection
) -> None:
    rows = await db.fetch(
        "SELECT u.profile, u.redacted_user_certificate, d.redacted_device_certificate,"
        "  d.verify_key, c.device_id AS certifier"
        " FROM user_ u JOIN device d ON d.user_ = u._id"
        " JOIN organization o ON o._id = u.organization"
        " LEFT JOIN device c ON c._id = u.user_certifier"
        " WHERE o.organization_id = $1 ORDER BY u._id",
        pg_org.organization_id,
    )
    assert [r["profile"] for r in rows] == ["ADMIN", "STANDARD", "OUTSIDER"]
    assert all(r["redacted_user_certificate"] and r["redacted_device_certificate"] for r in rows)
    assert all(r["verify_key"] is not None for r in rows)
    assert [r["certifier"] for r in rows] == [None, pg_org.alice.device_id, pg_org.alice.device_id]


async def test_a_device_stored_without_verify_key_still_connects(
    pg_org: Organization, db: asyncpg.Connection
) -> None:
    # As Parsec 2.0.0 stores it: the key is only in the device certificate.
    await db.execute(
        "UPDATE device SET verify_key = NULL WHERE device_id = $2 AND organization ="
        " (SELECT _id FROM organization WHERE organization_id = $1)",
        pg_org.organization_id,
        pg_org.bob.device_id,
    )
    async with await pg_org.bob.connect() as conn:
        assert await conn.cmd("ping", ping="hi") == {"status": "ok", "pong": "hi"}
