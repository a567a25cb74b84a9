"""Where block data lives: an interface of three operations, each implementation behind it
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
        """Store the data under the key, replacing whatever an earlier create left there.

        Overwriting is safe: `block_create` only writes a block id that has no metadata
        yet, so what it replaces is the leftover of a failed attempt, never a block in use.
        """

    @abstractmethod
    async def read(
        self, organization_id: str, block_id: uuid.UUID
    ) -> bytes | BlockStoreBadOutcome: ...

    @abstractmethod
    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        """Remove the data under the key; nothing there is a success too. Only used to undo
        what a failed create wrote (RAID5)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections (nothing by default)."""
