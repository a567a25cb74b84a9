"""Blocks through a running server whose blockstore is S3 (moto over HTTPS, private CA):
block_create/block_read from a client connection, `timeout` replies once the store is
down while the metadata commands keep working, and no start on an unusable bucket."""

from __future__ import annotations

import time

import pytest

from parsec_server.api.certificates import RealmRoleCertificate, sign_certificate
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.backend.config import RaidBlockstoreConfig, StartupError
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from tests.backend.blockstore.conftest import MotoFactory, MotoS3Server, S3Bucket
from tests.fixtures.servers import ServerFactory, create_org

BUCKET = "parsec"


async def create_realm(conn: BackendConnection, device: LocalDevice) -> ID:
    realm_id = ID.new()
    certificate = RealmRoleCertificate(
        author=device.device_id,
        timestamp=DateTime.now(),
        realm_id=realm_id,
        user_id=device.user_id,
        role=RealmRole.OWNER,
    )
    role_certificate = sign_certificate(certificate, device.signing_key)
    assert await conn.cmd("realm_create", role_certificate=role_certificate) == {"status": "ok"}
    return realm_id


@pytest.fixture
async def s3(moto_servers: MotoFactory) -> MotoS3Server:
    (server,) = moto_servers(1)
    await server.create_bucket(BUCKET)
    return server


async def test_blocks_in_s3_then_store_down(
    server_factory: ServerFactory, s3: MotoS3Server
) -> None:
    async with server_factory(blockstore=s3.config(BUCKET)) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            block_id = ID.new()
            block = bytes(range(256)) * 2048  # a 512 KiB block
            rep = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=block)
            assert rep == {"status": "ok"}
            assert await conn.cmd("block_read", block_id=block_id) == {
                "status": "ok",
                "block": block,
            }
            # Stored as `<organization>/<block uuid>` in the bucket.
            key = f"{org.organization_id}/{block_id.uuid}"
            assert await s3.keys(BUCKET) == [key]
            assert await s3.get_object(BUCKET, key) == block

            s3.stop()
            started = time.monotonic()
            assert await conn.cmd("block_read", block_id=block_id) == {"status": "timeout"}
            other_id = ID.new()
            rep = await conn.cmd("block_create", block_id=other_id, realm_id=realm_id, block=b"x")
            assert rep == {"status": "timeout"}
            assert time.monotonic() - started < 10
            # No metadata for the failed create: the block is unknown.
            assert await conn.cmd("block_read", block_id=other_id) == {"status": "not_found"}
            # The metadata commands do not depend on the blockstore.
            assert await conn.cmd("ping", ping="still here") == {
                "status": "ok",
                "pong": "still here",
            }
            status = await conn.cmd("realm_status", realm_id=realm_id)
            assert status["status"] == "ok"
            assert status["in_maintenance"] is False


async def test_raid5_of_s3_through_the_server(
    server_factory: ServerFactory, s3: MotoS3Server, s3_bucket: S3Bucket
) -> None:
    # Node 0 on a server of its own (stopped below), nodes 1 and 2 on the shared one.
    other_bucket = S3Bucket(s3_bucket.server, f"{s3_bucket.name}-2")
    await s3_bucket.server.create_bucket(other_bucket.name)
    nodes = (s3.config(BUCKET), s3_bucket.config, other_bucket.config)
    config = RaidBlockstoreConfig("RAID5", nodes)
    async with server_factory(blockstore=config) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            block_id = ID.new()
            rep = await conn.cmd(
                "block_create", block_id=block_id, realm_id=realm_id, block=b"data"
            )
            assert rep == {"status": "ok"}
            s3.stop()
            assert await conn.cmd("block_read", block_id=block_id) == {
                "status": "ok",
                "block": b"data",
            }


async def test_server_does_not_start_without_its_bucket(
    server_factory: ServerFactory, s3: MotoS3Server
) -> None:
    with pytest.raises(StartupError, match=r"^Cannot use S3 bucket `missing` at https://"):
        async with server_factory(blockstore=s3.config("missing")):
            pass
    s3.stop()
    with pytest.raises(StartupError, match="Could not connect to the endpoint URL"):
        async with server_factory(blockstore=s3.config(BUCKET)):
            pass


async def test_raid5_of_s3_retried_create_and_tampered_chunk_through_the_server(
    server_factory: ServerFactory, s3_bucket: S3Bucket
) -> None:
    buckets = [S3Bucket(s3_bucket.server, f"{s3_bucket.name}-{index}") for index in range(3)]
    for bucket in buckets:
        await bucket.server.create_bucket(bucket.name)
    config = RaidBlockstoreConfig("RAID5", tuple(bucket.config for bucket in buckets))
    async with server_factory(blockstore=config) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            block_id = ID.new()
            key = f"{org.organization_id}/{block_id.uuid}"
            # Nodes 1 and 2 cannot store (their bucket is gone): `timeout`, then the
            # client's retry brings new bytes of the same length.
            for bucket in buckets[1:]:
                await bucket.server.delete_bucket(bucket.name)
            first, retry = b"first attempt" * 100, b"the retry, ok" * 100
            rep = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=first)
            assert rep == {"status": "timeout"}
            for bucket in buckets[1:]:
                await bucket.server.create_bucket(bucket.name)
            rep = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=retry)
            assert rep == {"status": "ok"}
            assert await conn.cmd("block_read", block_id=block_id) == {
                "status": "ok",
                "block": retry,
            }
            # A chunk changed behind the server's back: an error, never wrong data.
            chunk = await buckets[0].get_object(key)
            await buckets[0].server.put_object(buckets[0].name, key, chunk[::-1])
            assert await conn.cmd("block_read", block_id=block_id) == {"status": "timeout"}
