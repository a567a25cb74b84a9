"""The `MOCKED` (memory), `POSTGRESQL` and `file:` blockstores: the latest create of a key wins,
delete removes it (protocol/50-block-blockstore.md sections 5.3 and 5.4, and the
overwrite deviation of docs/deviations.md)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.blockdir import BlockDirectory
from parsec_server.backend.blockstore.file import FileBlockStore
from parsec_server.backend.blockstore.memory import MemoryBlockStore
from parsec_server.backend.blockstore.postgresql import PostgreSQLBlockStore

ORG = "MyOrg"


@pytest.fixture(params=["memory", "postgresql", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlockStore]:
    if request.param == "memory":
        yield MemoryBlockStore()
        return
    if request.param == "file":
        file_store = await FileBlockStore.start(BlockDirectory(tmp_path))
        yield file_store
        await file_store.close()
        return
    url: str = request.getfixturevalue("migrated_postgresql_url")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        yield PostgreSQLBlockStore(pool)
    finally:
        await pool.close()


async def test_create_then_read(store: BlockStore) -> None:
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    assert await store.read(ORG, block_id) == b"data"
    assert await store.read("OtherOrg", block_id) is BlockStoreBadOutcome.NOT_FOUND


async def test_create_overwrites_what_an_earlier_create_stored(store: BlockStore) -> None:
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"first attempt") is None
    assert await store.create(ORG, block_id, b"retry, another length") is None
    assert await store.read(ORG, block_id) == b"retry, another length"


async def test_delete_removes_the_data_and_a_missing_key_is_fine(store: BlockStore) -> None:
    block_id, other_id = uuid.uuid4(), uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    assert await store.create(ORG, other_id, b"other") is None
    assert await store.delete(ORG, block_id) is None
    assert await store.read(ORG, block_id) is BlockStoreBadOutcome.NOT_FOUND
    assert await store.read(ORG, other_id) == b"other"
    assert await store.delete(ORG, block_id) is None


async def test_postgresql_store_down_is_unavailable(migrated_postgresql_url: str) -> None:
    pool = await asyncpg.create_pool(migrated_postgresql_url, min_size=1, max_size=1)
    store = PostgreSQLBlockStore(pool)
    await pool.close()
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is BlockStoreBadOutcome.UNAVAILABLE
    assert await store.read(ORG, block_id) is BlockStoreBadOutcome.UNAVAILABLE
    assert await store.delete(ORG, block_id) is BlockStoreBadOutcome.UNAVAILABLE
