from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome

# The latest create wins (see BlockStore.create); the row stays where the reference's
# server reads it.
_SQL_CREATE = """
INSERT INTO block_data (organization_id, block_id, data) VALUES ($1, $2, $3)
ON CONFLICT (organization_id, block_id) DO UPDATE SET data = EXCLUDED.data
"""
_SQL_READ = "SELECT data FROM block_data WHERE organization_id = $1 AND block_id = $2"
_SQL_DELETE = "DELETE FROM block_data WHERE organization_id = $1 AND block_id = $2"

_FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgreSQLBlockStore(BlockStore):
    """Block data in the main database (`POSTGRESQL`), in a table of its own."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        try:
            await self._pool.execute(_SQL_CREATE, organization_id, block_id, data)
        except _FAILURES:
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        try:
            data = await self._pool.fetchval(_SQL_READ, organization_id, block_id)
        except _FAILURES:
            return BlockStoreBadOutcome.UNAVAILABLE
        return BlockStoreBadOutcome.NOT_FOUND if data is None else bytes(data)

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        try:
            await self._pool.execute(_SQL_DELETE, organization_id, block_id)
        except _FAILURES:
            return BlockStoreBadOutcome.UNAVAILABLE
        return None
