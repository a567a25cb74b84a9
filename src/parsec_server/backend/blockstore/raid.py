"""RAID0, RAID1 and RAID5 over any single stores (protocol/50-block-blockstore.md
sections 5.5 to 5.7, failure table of section 6). Every node is called concurrently.

A block id's data must be one content on every node, even after failed creates and their
retries (which the client sends with new bytes: a fresh nonce). The nodes' create replaces
what an earlier attempt left, so a retry rewrites every node it reaches; RAID5 moreover
deletes the chunks of a create that failed, and reads every node, the parity one included,
to return a block only when its chunks agree (docs/deviations.md states the guarantees).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import structlog

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.readiness import CheckOutcome, exception_outcome

logger = structlog.get_logger("parsec.blockstore")

_LENGTH_PREFIX_SIZE = 4  # RAID5: big-endian unsigned length of the block before its bytes


class _RaidBlockStore(BlockStore):
    def __init__(self, nodes: Sequence[BlockStore]) -> None:
        if not nodes:
            raise ValueError("a RAID block store needs nodes")
        self.nodes = tuple(nodes)

    def tolerated_failures(self) -> int:
        """How many nodes may fail with the set still serving."""
        return 0

    async def check_ready(self, within: float) -> CheckOutcome:
        """Every node, concurrently. Ready while the set can serve; `degraded` when some
        node fails but the set still serves."""
        results = await asyncio.gather(
            *(node.check_ready(within) for node in self.nodes), return_exceptions=True
        )
        outcomes = [
            result if isinstance(result, CheckOutcome) else exception_outcome(result)
            for result in results
        ]
        failing = [index for index, outcome in enumerate(outcomes) if not outcome.ok]
        serving = len(failing) <= self.tolerated_failures()
        details = {
            "type": self.type_name,
            "degraded": serving and bool(failing),
            "nodes": [outcome.to_json() for outcome in outcomes],
        }
        log_error = "; ".join(f"node {index}: {outcomes[index].log_error}" for index in failing)
        return CheckOutcome(serving, details, log_error or None)

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        outcomes = await asyncio.gather(
            *(node.delete(organization_id, block_id) for node in self.nodes)
        )
        if any(outcome is not None for outcome in outcomes):
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def close(self) -> None:
        await asyncio.gather(*(node.close() for node in self.nodes))


def _merged_failure(
    outcomes: Sequence[bytes | BlockStoreBadOutcome],
) -> BlockStoreBadOutcome:
    """NOT_FOUND when every consulted node said so, UNAVAILABLE otherwise (a node that
    failed may hold the data, a node that answered holds some of it)."""
    if outcomes and all(outcome is BlockStoreBadOutcome.NOT_FOUND for outcome in outcomes):
        return BlockStoreBadOutcome.NOT_FOUND
    return BlockStoreBadOutcome.UNAVAILABLE


# RAID0


def raid0_node_index(block_id: uuid.UUID, node_count: int) -> int:
    """The node of a block: its UUID as a 128-bit big-endian integer, modulo the nodes."""
    return block_id.int % node_count


class Raid0BlockStore(_RaidBlockStore):
    """Striping by block, no redundancy: each block on one node, outcomes unchanged."""

    type_name = "RAID0"

    def _node(self, block_id: uuid.UUID) -> BlockStore:
        return self.nodes[raid0_node_index(block_id, len(self.nodes))]

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        return await self._node(block_id).create(organization_id, block_id, data)

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        return await self._node(block_id).read(organization_id, block_id)

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        return await self._node(block_id).delete(organization_id, block_id)


# RAID1


class Raid1BlockStore(_RaidBlockStore):
    """Mirroring: every node holds the whole block.

    create needs every node (one failing node fails the create, so the client retries
    later; the retry overwrites what the failed attempt stored, so a successful create
    leaves the same content on every node). read answers with the first node that returns
    the block and cancels the others.

    Readiness: ready (degraded) while one node answers: reads are served, but creates
    fail until every node is back.
    """

    type_name = "RAID1"

    def tolerated_failures(self) -> int:
        return len(self.nodes) - 1

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
    return _xor(chunks).to_bytes(len(chunks[0]), "big")


def _xor(chunks: Sequence[bytes]) -> int:
    """Bytewise XOR of chunks of one length, as an integer (ValueError if the lengths differ)."""
    length = len(chunks[0])
    if any(len(chunk) != length for chunk in chunks):
        raise ValueError("RAID5 chunks of different lengths")
    accumulator = 0
    for chunk in chunks:
        accumulator ^= int.from_bytes(chunk, "big")
    return accumulator


def raid5_join(chunks: Sequence[bytes]) -> bytes:
    """The block from its data chunks; ValueError unless they are laid out exactly as
    `raid5_split` lays out a block (equal lengths, the length prefix giving that chunk
    length, zero padding)."""
    chunk_len = len(chunks[0])
    if any(len(chunk) != chunk_len for chunk in chunks):
        raise ValueError("RAID5 chunks of different lengths")
    payload = b"".join(chunks)
    if len(payload) < _LENGTH_PREFIX_SIZE:
        raise ValueError("RAID5 payload shorter than its length prefix")
    end = _LENGTH_PREFIX_SIZE + int.from_bytes(payload[:_LENGTH_PREFIX_SIZE], "big")
    if -(-end // len(chunks)) != chunk_len:
        raise ValueError("RAID5 length prefix does not fit the chunk length")
    if any(payload[end:]):
        raise ValueError("RAID5 padding is not zero")
    return payload[_LENGTH_PREFIX_SIZE:end]


def raid5_parity_matches(chunks: Sequence[bytes], parity: bytes) -> bool:
    """Whether the parity chunk is the XOR of the data chunks (all of its length)."""
    try:
        return _xor([*chunks, parity]) == 0
    except ValueError:  # lengths differ
        return False


class Raid5BlockStore(_RaidBlockStore):
    """Striping with a dedicated parity node (the last one, no rotation).

    create: every chunk written concurrently; with one node failing the block is stored
    degraded and the create succeeds (section 5.7); with two or more it fails, and the
    chunks it did store are deleted so that no later read can mix them with a retry's.
    read: every node, the parity one included. All chunks there: they must match the
    parity, or the read fails (UNAVAILABLE) rather than return a mix. One chunk missing:
    rebuilt from the others (nothing is left to check them against).

    Readiness: ready (degraded) with one node failing, as reads and creates still work.
    """

    type_name = "RAID5"

    def tolerated_failures(self) -> int:
        return 1

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
            stored = [index for index in range(len(self.nodes)) if index not in failed]
            await self._undo_create(organization_id, block_id, stored)
            return BlockStoreBadOutcome.UNAVAILABLE
        if failed:
            logger.warning("RAID5 block stored degraded", failed_node=failed[0], block=block_id)
        return None

    async def _undo_create(
        self, organization_id: str, block_id: uuid.UUID, stored: Sequence[int]
    ) -> None:
        """Deletes the chunks a failed create stored: the client's retry brings new bytes,
        and a node the retry cannot reach must not keep a chunk of this attempt."""
        outcomes = await asyncio.gather(
            *(self.nodes[index].delete(organization_id, block_id) for index in stored)
        )
        kept = [
            index for index, outcome in zip(stored, outcomes, strict=True) if outcome is not None
        ]
        if kept:
            logger.error("RAID5 failed create left chunks", nodes=kept, block=block_id)

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        results = await asyncio.gather(
            *(node.read(organization_id, block_id) for node in self.nodes)
        )
        chunks = [result for result in results if isinstance(result, bytes)]
        missing = [index for index, result in enumerate(results) if not isinstance(result, bytes)]
        if len(missing) > 1:
            if chunks:
                logger.error("RAID5 block cannot be rebuilt", missing_nodes=missing, block=block_id)
            return _merged_failure(results)
        try:
            return raid5_join(_data_chunks(chunks, missing[0] if missing else None))
        except ValueError as exc:
            logger.error("RAID5 chunks do not form a block", block=block_id, error=str(exc))
            return BlockStoreBadOutcome.UNAVAILABLE


def _data_chunks(present: list[bytes], missing: int | None) -> list[bytes]:
    """The data chunks of a block from what its nodes returned (in node order, parity
    last), `missing` being the one node that returned nothing, if any. ValueError if the
    chunks disagree with the parity."""
    if missing is None:
        *data, parity = present
        if not raid5_parity_matches(data, parity):
            raise ValueError("RAID5 chunks do not match the parity")
        return data
    if missing == len(present):  # the parity node: the data chunks are all there
        return present
    *others, parity = present
    return [*others[:missing], xor_chunks([*others, parity]), *others[missing:]]
