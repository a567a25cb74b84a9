from __future__ import annotations

import asyncio
import uuid

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.remote import DEFAULT_TIMEOUTS
from parsec_server.backend.readiness import CheckOutcome, exception_outcome

# The latest create wins (see BlockStore.create); the row stays where the reference's
# server reads it.
_SQL_CREATE = """
INSERT INTO block_data (organization_id, block_id, data) VALUES ($1, $2, $3)
ON CONFLICT (organization_id, block_id) DO UPDATE SET data = EXCLUDED.data
"""
_SQL_READ = "SELECT data FROM block_data WHERE organization_id = $1 AND block_id = $2"
_SQL_DELETE = "DELETE FROM block_data WHERE organization_id = $1 AND block_id = $2"
_SQL_CHECK = "SELECT 1"

_FAILURES = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgreSQLBlockStore(BlockStore):
    """Block data in the main database (`POSTGRESQL`), in a table of its own.

    Each call (waiting for a pooled connection included) is bounded by `timeout` seconds,
    the ceiling of the remote stores: a busy pool, a lock held by another transaction or
    an unresponsive database make it `UNAVAILABLE` (the `timeout` reply)."""

    type_name = "POSTGRESQL"

    def __init__(self, pool: asyncpg.Pool, timeout: float = DEFAULT_TIMEOUTS.operation) -> None:
        self._pool = pool
        self._timeout = timeout

    async def check_ready(self, within: float) -> CheckOutcome:
        try:
            async with asyncio.timeout(within):
                await self._pool.fetchval(_SQL_CHECK)
        except _FAILURES as exc:
            return exception_outcome(exc, type=self.type_name)
        return CheckOutcome(True, {"type": self.type_name})

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._pool.execute(_SQL_CREATE, organization_id, block_id, data)
        except _FAILURES:
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        try:
            async with asyncio.timeout(self._timeout):
                data = await self._pool.fetchval(_SQL_READ, organization_id, block_id)
        except _FAILURES:
            return BlockStoreBadOutcome.UNAVAILABLE
        return BlockStoreBadOutcome.NOT_FOUND if data is None else bytes(data)

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._pool.execute(_SQL_DELETE, organization_id, block_id)
        except _FAILURES:
            return BlockStoreBadOutcome.UNAVAILABLE
        return None
