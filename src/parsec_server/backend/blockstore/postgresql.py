from __future__ import annotations

import asyncio
import uuid

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.remote import DEFAULT_TIMEOUTS

_SQL_CREATE = """
INSERT INTO block_data (organization_id, block_id, data) VALUES ($1, $2, $3)
ON CONFLICT (organization_id, block_id) DO NOTHING
"""
_SQL_READ = "SELECT data FROM block_data WHERE organization_id = $1 AND block_id = $2"


class PostgreSQLBlockStore(BlockStore):
    """Block data in the main database (`POSTGRESQL`), in a table of its own.

    Each call (waiting for a pooled connection included) is bounded by `timeout` seconds,
    the ceiling of the remote stores: a busy pool, a lock held by another transaction or
    an unresponsive database make it `UNAVAILABLE` (the `timeout` reply)."""

    def __init__(self, pool: asyncpg.Pool, timeout: float = DEFAULT_TIMEOUTS.operation) -> None:
        self._pool = pool
        self._timeout = timeout

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._pool.execute(_SQL_CREATE, organization_id, block_id, data)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        try:
            async with asyncio.timeout(self._timeout):
                data = await self._pool.fetchval(_SQL_READ, organization_id, block_id)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return BlockStoreBadOutcome.UNAVAILABLE
        return BlockStoreBadOutcome.NOT_FOUND if data is None else bytes(data)
