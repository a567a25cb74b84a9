from __future__ import annotations

import uuid

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome


class MemoryBlockStore(BlockStore):
    """One process only (`MOCKED`)."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, uuid.UUID], bytes] = {}

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        self._blocks[organization_id, block_id] = data
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        data = self._blocks.get((organization_id, block_id))
        return BlockStoreBadOutcome.NOT_FOUND if data is None else data

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        self._blocks.pop((organization_id, block_id), None)
        return None
