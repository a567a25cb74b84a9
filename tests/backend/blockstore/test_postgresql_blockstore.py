"""The PostgreSQL blockstore (`--blockstore POSTGRESQL`): block data in the main database,
each call bounded in time like the remote stores'."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.backend.blockstore.base import BlockStoreBadOutcome
from parsec_server.backend.blockstore.postgresql import PostgreSQLBlockStore
from parsec_server.backend.blockstore.remote import DEFAULT_TIMEOUTS


@pytest.fixture
async def pool(migrated_postgresql_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_postgresql_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


def test_default_bound_is_the_remote_stores_ceiling() -> None:
    assert DEFAULT_TIMEOUTS.operation == 10.0


async def test_create_then_read(pool: asyncpg.Pool) -> None:
    store = PostgreSQLBlockStore(pool)
    organization_id, block_id = f"Org{uuid.uuid4().hex}", uuid.uuid4()
    assert await store.read(organization_id, block_id) is BlockStoreBadOutcome.NOT_FOUND
    assert await store.create(organization_id, block_id, b"data") is None
    assert await store.create(organization_id, block_id, b"other") is None  # overwrites
    assert await store.read(organization_id, block_id) == b"other"


async def test_calls_on_a_database_that_does_not_answer_are_unavailable_in_time(
    pool: asyncpg.Pool, migrated_postgresql_url: str
) -> None:
    store = PostgreSQLBlockStore(pool, timeout=0.5)
    organization_id, block_id = f"Org{uuid.uuid4().hex}", uuid.uuid4()
    assert await store.create(organization_id, block_id, b"data") is None
    blocker = await asyncpg.connect(migrated_postgresql_url)
    try:
        # Another transaction holds the table: every query on it waits.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE block_data IN ACCESS EXCLUSIVE MODE")
        for call in (
            store.read(organization_id, block_id),
            store.create(organization_id, uuid.uuid4(), b"more"),
        ):
            started = time.monotonic()
            assert await call is BlockStoreBadOutcome.UNAVAILABLE
            assert 0.4 < time.monotonic() - started < 3
        await transaction.rollback()
    finally:
        await blocker.close()
    # The abandoned queries left the pool usable.
    assert await store.read(organization_id, block_id) == b"data"
