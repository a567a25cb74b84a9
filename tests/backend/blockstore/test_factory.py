"""`blockstore_factory`: every configuration builds its store, started and closed."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from parsec_server.backend.blockstore.factory import blockstore_factory
from parsec_server.backend.blockstore.file import FileBlockStore
from parsec_server.backend.blockstore.memory import MemoryBlockStore
from parsec_server.backend.blockstore.raid import (
    Raid0BlockStore,
    Raid1BlockStore,
    Raid5BlockStore,
)
from parsec_server.backend.blockstore.s3 import S3BlockStore
from parsec_server.backend.blockstore.swift import SwiftBlockStore
from parsec_server.backend.config import (
    FileBlockstoreConfig,
    MockedBlockstoreConfig,
    PostgreSQLBlockstoreConfig,
    RaidBlockstoreConfig,
    StartupError,
    SwiftBlockstoreConfig,
)
from tests.backend.blockstore.conftest import FAST_TIMEOUTS, S3Bucket
from tests.backend.blockstore.swift_standin import SwiftStandIn

ORG = "MyOrg"


async def test_mocked() -> None:
    async with blockstore_factory(MockedBlockstoreConfig(), None) as store:
        assert isinstance(store, MemoryBlockStore)


async def test_postgresql_needs_the_database() -> None:
    with pytest.raises(StartupError, match=r"^PostgreSQL block store is not available$"):
        async with blockstore_factory(PostgreSQLBlockstoreConfig(), None):
            pass


async def test_s3_started_and_closed(s3_bucket: S3Bucket) -> None:
    async with blockstore_factory(s3_bucket.config, None) as store:
        assert isinstance(store, S3BlockStore)
        block_id = uuid.uuid4()
        assert await store.create(ORG, block_id, b"data") is None
        assert await store.read(ORG, block_id) == b"data"
    assert store._closed


async def test_swift_started() -> None:
    standin = SwiftStandIn("user", "tenant", "password", containers={"parsec"})
    standin.start()
    try:
        config = SwiftBlockstoreConfig(standin.auth_url, "tenant", "parsec", "user", "password")
        async with blockstore_factory(config, None, FAST_TIMEOUTS) as store:
            assert isinstance(store, SwiftBlockStore)
            block_id = uuid.uuid4()
            assert await store.create(ORG, block_id, b"data") is None
            assert await store.read(ORG, block_id) == b"data"
    finally:
        standin.stop()


@pytest.mark.parametrize(
    ("mode", "cls"),
    [("RAID0", Raid0BlockStore), ("RAID1", Raid1BlockStore), ("RAID5", Raid5BlockStore)],
)
async def test_raid_of_mixed_nodes(mode: str, cls: type, s3_bucket: S3Bucket) -> None:
    nodes = (MockedBlockstoreConfig(), s3_bucket.config, MockedBlockstoreConfig())
    config = RaidBlockstoreConfig(mode, nodes)  # type: ignore[arg-type]
    async with blockstore_factory(config, None) as store:
        assert isinstance(store, cls)
        assert isinstance(store, Raid0BlockStore | Raid1BlockStore | Raid5BlockStore)
        assert [type(node) for node in store.nodes] == [
            MemoryBlockStore,
            S3BlockStore,
            MemoryBlockStore,
        ]
        block_id = uuid.uuid4()
        assert await store.create(ORG, block_id, b"data") is None
        assert await store.read(ORG, block_id) == b"data"
    assert store.nodes[1]._closed  # type: ignore[attr-defined]


async def test_raid_node_failing_to_start(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[S3BlockStore] = []
    real_close = S3BlockStore.close

    async def close(self: S3BlockStore) -> None:
        closed.append(self)
        await real_close(self)

    monkeypatch.setattr(S3BlockStore, "close", close)
    missing = s3_bucket.server.config("missing-bucket")
    config = RaidBlockstoreConfig("RAID1", (s3_bucket.config, missing))
    with pytest.raises(StartupError) as exc_info:
        async with blockstore_factory(config, None, FAST_TIMEOUTS):
            pass
    assert str(exc_info.value).startswith("RAID1 node 1: Cannot use S3 bucket `missing-bucket`")
    assert len(closed) == 2  # the failed node, and node 0 that had started
    assert all(store._closed for store in closed)


async def test_raid5_needs_three_nodes() -> None:
    config = RaidBlockstoreConfig("RAID5", (MockedBlockstoreConfig(), MockedBlockstoreConfig()))
    with pytest.raises(StartupError, match=r"^RAID5 block store needs at least 3 nodes$"):
        async with blockstore_factory(config, None):
            pass


async def test_raid_of_nodes_sharing_a_storage_does_not_start(s3_bucket: S3Bucket) -> None:
    # Two spellings of one bucket; no node is started (the check comes first).
    endpoint = s3_bucket.config.endpoint_url
    assert endpoint is not None
    same_bucket = replace(s3_bucket.config, endpoint_url=endpoint.upper() + "/", key="other")
    config = RaidBlockstoreConfig(
        "RAID5", (s3_bucket.config, MockedBlockstoreConfig(), same_bucket)
    )
    with pytest.raises(StartupError) as exc_info:
        async with blockstore_factory(config, None, FAST_TIMEOUTS):
            pass
    assert str(exc_info.value) == (
        f"RAID5 nodes 0 and 2 use the same storage (S3 bucket `{s3_bucket.name}` at "
        f"{endpoint}): each node needs a storage of its own"
    )


async def test_raid_of_postgresql_nodes_does_not_start() -> None:
    config = RaidBlockstoreConfig("RAID0", (PostgreSQLBlockstoreConfig(),) * 2)
    with pytest.raises(
        StartupError, match=r"^RAID0 nodes 0 and 1 use the same storage \(POSTGRESQL"
    ):
        async with blockstore_factory(config, object()):
            pass


async def test_file_started_and_closed(tmp_path: Path) -> None:
    async with blockstore_factory(FileBlockstoreConfig(tmp_path), None) as store:
        assert isinstance(store, FileBlockStore)
        block_id = uuid.uuid4()
        assert await store.create(ORG, block_id, b"data") is None
        assert await store.read(ORG, block_id) == b"data"
    assert store._executor._shutdown


async def test_raid_node_on_a_missing_directory_does_not_start(tmp_path: Path) -> None:
    nodes = (FileBlockstoreConfig(tmp_path), FileBlockstoreConfig(tmp_path / "missing"))
    with pytest.raises(StartupError, match=r"^RAID1 node 1: Block directory `.*` does not exist"):
        async with blockstore_factory(RaidBlockstoreConfig("RAID1", nodes), None):
            pass
