"""Where block data lives: an interface of three operations, each implementation behind it
(memory, PostgreSQL, S3, Swift, RAID) maps its own failures to these outcomes."""

from __future__ import annotations

import uuid
from abc import abstractmethod
from enum import Enum, auto

from parsec_server.backend.readiness import CheckOutcome, ReadinessProbe


class BlockStoreBadOutcome(Enum):
    NOT_FOUND = auto()
    UNAVAILABLE = auto()  # backing store down or failing: the `timeout` reply


class BlockStore(ReadinessProbe):
    """As a readiness probe: whether the store answers now (`type` in the details)."""

    type_name = "MOCKED"

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

    async def check_ready(self, within: float) -> CheckOutcome:
        return CheckOutcome(True, {"type": self.type_name})

    async def close(self) -> None:
        """Release connections (nothing by default)."""
