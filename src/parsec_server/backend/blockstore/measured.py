"""A block store whose every call is reported to the monitoring (count by result, and
duration), under the name of the store it wraps. Installed by the factory only when
monitoring is on; RAID sets get one around each node and one around the set."""

from __future__ import annotations

import time
import uuid

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.metrics import BlockstoreOperation, BlockstoreResult, Metrics

_RESULTS: dict[BlockStoreBadOutcome, BlockstoreResult] = {
    BlockStoreBadOutcome.NOT_FOUND: "not_found",
    BlockStoreBadOutcome.UNAVAILABLE: "unavailable",
}


def _result(outcome: object) -> BlockstoreResult:
    if isinstance(outcome, BlockStoreBadOutcome):
        return _RESULTS[outcome]
    return "ok"


class MeasuredBlockStore(BlockStore):
    def __init__(self, inner: BlockStore, backend: str, metrics: Metrics) -> None:
        self.inner = inner
        self.backend = backend
        self._metrics = metrics

    def _report(self, operation: BlockstoreOperation, result: BlockstoreResult, t0: float) -> None:
        self._metrics.blockstore_call(self.backend, operation, result, time.perf_counter() - t0)

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        t0 = time.perf_counter()
        try:
            outcome = await self.inner.create(organization_id, block_id, data)
        except Exception:
            self._report("create", "error", t0)
            raise
        self._report("create", _result(outcome), t0)
        return outcome

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        t0 = time.perf_counter()
        try:
            outcome = await self.inner.read(organization_id, block_id)
        except Exception:
            self._report("read", "error", t0)
            raise
        self._report("read", _result(outcome), t0)
        return outcome

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        t0 = time.perf_counter()
        try:
            outcome = await self.inner.delete(organization_id, block_id)
        except Exception:
            self._report("delete", "error", t0)
            raise
        self._report("delete", _result(outcome), t0)
        return outcome

    async def close(self) -> None:
        await self.inner.close()
