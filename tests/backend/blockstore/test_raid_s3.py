"""RAID1 and RAID5 over three real S3 stores (three moto servers over HTTPS), built by the
blockstore factory as the server builds them; one member is killed mid-test, or made to
fail its writes by removing its bucket."""

from __future__ import annotations

import time
import uuid

from parsec_server.backend.blockstore.base import BlockStoreBadOutcome
from parsec_server.backend.blockstore.factory import blockstore_factory
from parsec_server.backend.blockstore.raid import raid5_split
from parsec_server.backend.blockstore.remote import RemoteTimeouts
from parsec_server.backend.config import RaidBlockstoreConfig
from tests.backend.blockstore.conftest import MotoFactory, MotoS3Server

# No retry: a stopped member fails at once, without the retry's back-off.
TIMEOUTS = RemoteTimeouts(connect=1.0, read=2.0, attempts=1, operation=3.0)
ORG = "MyOrg"
BUCKET = "parsec"
BLOCK_ID = uuid.UUID("0f3c2b1a-1111-4222-8333-444455556666")


async def three_stores(moto_servers: MotoFactory) -> list[MotoS3Server]:
    servers = moto_servers(3)
    for server in servers:
        await server.create_bucket(BUCKET)
    return servers


async def test_raid1_over_s3_reads_survive_a_stopped_member(moto_servers: MotoFactory) -> None:
    servers = await three_stores(moto_servers)
    config = RaidBlockstoreConfig("RAID1", tuple(server.config(BUCKET) for server in servers))
    async with blockstore_factory(config, None, TIMEOUTS) as store:
        blocks = {uuid.uuid4(): f"block {i}".encode() for i in range(5)}
        for block_id, data in blocks.items():
            assert await store.create(ORG, block_id, data) is None
        for server in servers:  # a full copy on every member
            assert await server.keys(BUCKET) == sorted(f"{ORG}/{b}" for b in blocks)

        servers[0].stop()
        started = time.monotonic()
        for block_id, data in blocks.items():
            assert await store.read(ORG, block_id) == data
        # Writing needs every mirror (50-block-blockstore.md 5.6).
        assert await store.create(ORG, uuid.uuid4(), b"new") is BlockStoreBadOutcome.UNAVAILABLE
        assert time.monotonic() - started < 10

        servers[1].stop()
        block_id, data = next(iter(blocks.items()))
        assert await store.read(ORG, block_id) == data  # one member is enough
        servers[2].stop()
        assert await store.read(ORG, block_id) is BlockStoreBadOutcome.UNAVAILABLE


async def test_raid5_over_s3_reads_survive_a_stopped_member(moto_servers: MotoFactory) -> None:
    servers = await three_stores(moto_servers)
    config = RaidBlockstoreConfig("RAID5", tuple(server.config(BUCKET) for server in servers))
    async with blockstore_factory(config, None, TIMEOUTS) as store:
        block_id = uuid.UUID("0f3c2b1a-1111-4222-8333-444455556666")
        data = bytes(range(256)) * 1000 + b"tail"
        assert await store.create(ORG, block_id, data) is None
        # Chunk i on node i, parity on the last node, all under the block's key.
        chunks, parity = raid5_split(data, 3)
        key = f"{ORG}/{block_id}"
        stored = [await server.get_object(BUCKET, key) for server in servers]
        assert stored == [*chunks, parity]

        servers[1].stop()  # a data node
        started = time.monotonic()
        assert await store.read(ORG, block_id) == data  # rebuilt from parity
        # One member down: the create succeeds degraded (50-block-blockstore.md 5.7).
        degraded_id = uuid.uuid4()
        assert await store.create(ORG, degraded_id, b"degraded") is None
        assert await store.read(ORG, degraded_id) == b"degraded"
        assert time.monotonic() - started < 10

        servers[2].stop()  # and the parity node: two failures
        assert await store.read(ORG, block_id) is BlockStoreBadOutcome.UNAVAILABLE
        assert await store.create(ORG, uuid.uuid4(), b"x") is BlockStoreBadOutcome.UNAVAILABLE


async def test_raid5_over_s3_retry_after_a_partial_failure(moto_servers: MotoFactory) -> None:
    servers = await three_stores(moto_servers)
    config = RaidBlockstoreConfig("RAID5", tuple(server.config(BUCKET) for server in servers))
    key = f"{ORG}/{BLOCK_ID}"
    first, retry = bytes(range(256)) * 40, bytes(reversed(range(256))) * 40
    async with blockstore_factory(config, None, TIMEOUTS) as store:
        # Nodes 1 and 2 refuse writes (no bucket): node 0's chunk is deleted again.
        await servers[1].delete_bucket(BUCKET)
        await servers[2].delete_bucket(BUCKET)
        assert await store.create(ORG, BLOCK_ID, first) is BlockStoreBadOutcome.UNAVAILABLE
        assert await servers[0].keys(BUCKET) == []
        # The retry (new bytes) succeeds degraded without node 0, then node 0 is back.
        await servers[0].delete_bucket(BUCKET)
        await servers[1].create_bucket(BUCKET)
        await servers[2].create_bucket(BUCKET)
        assert await store.create(ORG, BLOCK_ID, retry) is None
        await servers[0].create_bucket(BUCKET)
        assert await store.read(ORG, BLOCK_ID) == retry
        # A full retry (a later block_create of the same id) replaces every chunk.
        assert await store.create(ORG, BLOCK_ID, first) is None
        chunks, parity = raid5_split(first, 3)
        assert [await server.get_object(BUCKET, key) for server in servers] == [*chunks, parity]
        assert await store.read(ORG, BLOCK_ID) == first


async def test_raid5_over_s3_chunk_not_matching_the_parity_is_an_error(
    moto_servers: MotoFactory,
) -> None:
    servers = await three_stores(moto_servers)
    config = RaidBlockstoreConfig("RAID5", tuple(server.config(BUCKET) for server in servers))
    key = f"{ORG}/{BLOCK_ID}"
    data = b"the content of a block"
    async with blockstore_factory(config, None, TIMEOUTS) as store:
        assert await store.create(ORG, BLOCK_ID, data) is None
        chunk = await servers[1].get_object(BUCKET, key)
        await servers[1].put_object(BUCKET, key, bytes(len(chunk)))  # same length, zeroed
        assert await store.read(ORG, BLOCK_ID) is BlockStoreBadOutcome.UNAVAILABLE
        servers[1].stop()  # without the wrong chunk the block is rebuilt from the others
        assert await store.read(ORG, BLOCK_ID) == data
