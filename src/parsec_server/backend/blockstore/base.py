"""Where block data lives: an interface of two operations, each implementation behind it
(memory, PostgreSQL, S3, Swift, RAID) maps its own failures to these outcomes."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from enum import Enum, auto


class BlockStoreBadOutcome(Enum):
    NOT_FOUND = auto()
    UNAVAILABLE = auto()  # backing store down or failing: the `timeout` reply


class BlockStore(ABC):
    @abstractmethod
    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        """Store the data; idempotent (data already stored under the key is a success)."""

    @abstractmethod
    async def read(
        self, organization_id: str, block_id: uuid.UUID
    ) -> bytes | BlockStoreBadOutcome: ...

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections (nothing by default)."""
