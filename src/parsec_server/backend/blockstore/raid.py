"""RAID0, RAID1 and RAID5 over any single stores (protocol/50-block-blockstore.md
sections 5.5 to 5.7, failure table of section 6). Every node is called concurrently.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import structlog

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome

logger = structlog.get_logger("parsec.blockstore")

_LENGTH_PREFIX_SIZE = 4  # RAID5: big-endian unsigned length of the block before its bytes


class _RaidBlockStore(BlockStore):
    def __init__(self, nodes: Sequence[BlockStore]) -> None:
        if not nodes:
            raise ValueError("a RAID block store needs nodes")
        self.nodes = tuple(nodes)

    async def close(self) -> None:
        await asyncio.gather(*(node.close() for node in self.nodes))


def _merged_failure(outcomes: Sequence[BlockStoreBadOutcome]) -> BlockStoreBadOutcome:
    """NOT_FOUND when every consulted node said so, UNAVAILABLE otherwise (a node that
    failed may hold the data)."""
    if outcomes and all(outcome is BlockStoreBadOutcome.NOT_FOUND for outcome in outcomes):
        return BlockStoreBadOutcome.NOT_FOUND
    return BlockStoreBadOutcome.UNAVAILABLE


# RAID0


def raid0_node_index(block_id: uuid.UUID, node_count: int) -> int:
    """The node of a block: its UUID as a 128-bit big-endian integer, modulo the nodes."""
    return block_id.int % node_count


class Raid0BlockStore(_RaidBlockStore):
    """Striping by block, no redundancy: each block on one node, outcomes unchanged."""

    def _node(self, block_id: uuid.UUID) -> BlockStore:
        return self.nodes[raid0_node_index(block_id, len(self.nodes))]

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        return await self._node(block_id).create(organization_id, block_id, data)

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        return await self._node(block_id).read(organization_id, block_id)


# RAID1


class Raid1BlockStore(_RaidBlockStore):
    """Mirroring: every node holds the whole block.

    create needs every node (one failing node fails the create, so the client retries
    later; nodes that already stored it accept the retry). read answers with the first
    node that returns the block and cancels the others.
    """

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        outcomes = await asyncio.gather(
            *(node.create(organization_id, block_id, data) for node in self.nodes)
        )
        failed = sum(outcome is not None for outcome in outcomes)
        if failed:
            logger.warning("RAID1 create failed", failed_nodes=failed, nodes=len(self.nodes))
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        tasks = [asyncio.create_task(node.read(organization_id, block_id)) for node in self.nodes]
        failures: list[BlockStoreBadOutcome] = []
        try:
            for next_done in asyncio.as_completed(tasks):
                result = await next_done
                if isinstance(result, bytes):  # an empty block is a result too
                    return result
                failures.append(result)
        finally:
            for task in tasks:
                task.cancel()
        return _merged_failure(failures)


# RAID5


def raid5_split(data: bytes, node_count: int) -> tuple[list[bytes], bytes]:
    """(data chunks for nodes 0..N-2, parity chunk for node N-1) of a block.

    payload = 4-byte big-endian length + block, zero-padded to N-1 equal chunks;
    parity = bytewise XOR of the data chunks.
    """
    if node_count < 3:
        raise ValueError("RAID5 needs at least 3 nodes")
    chunk_count = node_count - 1
    payload = len(data).to_bytes(_LENGTH_PREFIX_SIZE, "big") + data
    chunk_len = -(-len(payload) // chunk_count)  # ceil
    payload = payload.ljust(chunk_len * chunk_count, b"\x00")
    chunks = [payload[i * chunk_len : (i + 1) * chunk_len] for i in range(chunk_count)]
    return chunks, xor_chunks(chunks)


def xor_chunks(chunks: Sequence[bytes]) -> bytes:
    """Bytewise XOR of chunks of one length."""
    length = len(chunks[0])
    if any(len(chunk) != length for chunk in chunks):
        raise ValueError("RAID5 chunks of different lengths")
    accumulator = 0
    for chunk in chunks:
        accumulator ^= int.from_bytes(chunk, "big")
    return accumulator.to_bytes(length, "big")


def raid5_join(chunks: Sequence[bytes]) -> bytes:
    """The block from its data chunks (ValueError if they do not form one)."""
    if any(len(chunk) != len(chunks[0]) for chunk in chunks):
        raise ValueError("RAID5 chunks of different lengths")
    payload = b"".join(chunks)
    if len(payload) < _LENGTH_PREFIX_SIZE:
        raise ValueError("RAID5 payload shorter than its length prefix")
    length = int.from_bytes(payload[:_LENGTH_PREFIX_SIZE], "big")
    end = _LENGTH_PREFIX_SIZE + length
    if end > len(payload):
        raise ValueError("RAID5 length prefix beyond the payload")
    return payload[_LENGTH_PREFIX_SIZE:end]


class Raid5BlockStore(_RaidBlockStore):
    """Striping with a dedicated parity node (the last one, no rotation).

    create: every chunk written concurrently; with one node failing the block is stored
    degraded and the create succeeds (section 5.7), with two or more it fails.
    read: the data nodes only; one of them missing is rebuilt from the parity node.
    """

    def __init__(self, nodes: Sequence[BlockStore]) -> None:
        if len(nodes) < 3:
            raise ValueError("RAID5 block store needs at least 3 nodes")
        super().__init__(nodes)

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        chunks, parity = raid5_split(data, len(self.nodes))
        outcomes = await asyncio.gather(
            *(
                node.create(organization_id, block_id, chunk)
                for node, chunk in zip(self.nodes, [*chunks, parity], strict=True)
            )
        )
        failed = [index for index, outcome in enumerate(outcomes) if outcome is not None]
        if len(failed) > 1:
            logger.warning("RAID5 create failed", failed_nodes=failed, nodes=len(self.nodes))
            return BlockStoreBadOutcome.UNAVAILABLE
        if failed:
            logger.warning("RAID5 block stored degraded", failed_node=failed[0], block=block_id)
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        *data_nodes, parity_node = self.nodes
        results = await asyncio.gather(
            *(node.read(organization_id, block_id) for node in data_nodes)
        )
        failures = [result for result in results if not isinstance(result, bytes)]
        if len(failures) > 1:
            return _merged_failure(failures)
        chunks = [result for result in results if isinstance(result, bytes)]
        if failures:
            missing = next(i for i, result in enumerate(results) if not isinstance(result, bytes))
            parity = await parity_node.read(organization_id, block_id)
            if not isinstance(parity, bytes):
                return BlockStoreBadOutcome.UNAVAILABLE  # the other data nodes answered
            try:
                rebuilt = xor_chunks([*chunks, parity])
            except ValueError as exc:
                return self._corrupted(block_id, exc)
            chunks.insert(missing, rebuilt)
        try:
            return raid5_join(chunks)
        except ValueError as exc:
            return self._corrupted(block_id, exc)

    @staticmethod
    def _corrupted(block_id: uuid.UUID, exc: ValueError) -> BlockStoreBadOutcome:
        logger.error("RAID5 chunks do not form a block", block=block_id, error=str(exc))
        return BlockStoreBadOutcome.UNAVAILABLE
