"""RAID0/1/5 layout (vectors/raid.json) and failure handling (50-block-blockstore.md
sections 5.5-5.7 and 6), over in-process nodes, some made to fail."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.memory import MemoryBlockStore
from parsec_server.backend.blockstore.raid import (
    Raid0BlockStore,
    Raid1BlockStore,
    Raid5BlockStore,
    raid0_node_index,
    raid5_join,
    raid5_split,
    xor_chunks,
)
from tests.fixtures import VECTORS_DIR

VECTORS_PATH = VECTORS_DIR / "raid.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())

ORG = "MyOrg"
UNAVAILABLE = BlockStoreBadOutcome.UNAVAILABLE
NOT_FOUND = BlockStoreBadOutcome.NOT_FOUND


class FlakyNode(BlockStore):
    """A memory node that can be switched to failing (UNAVAILABLE), slow, or failing its
    deletes only."""

    def __init__(self) -> None:
        self.memory = MemoryBlockStore()
        self.down = False
        self.refuse_deletes = False
        self.delay = 0.0
        self.calls = 0

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.down:
            return UNAVAILABLE
        return await self.memory.create(organization_id, block_id, data)

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.down:
            return UNAVAILABLE
        return await self.memory.read(organization_id, block_id)

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.down or self.refuse_deletes:
            return UNAVAILABLE
        return await self.memory.delete(organization_id, block_id)

    def forget(self, block_id: uuid.UUID) -> None:
        del self.memory._blocks[ORG, block_id]

    def held(self, block_id: uuid.UUID) -> bytes | None:
        return self.memory._blocks.get((ORG, block_id))

    def put(self, block_id: uuid.UUID, data: bytes) -> None:
        """Writes straight into the node, as someone with access to its storage could."""
        self.memory._blocks[ORG, block_id] = data


def nodes(count: int) -> list[FlakyNode]:
    return [FlakyNode() for _ in range(count)]


# Layout against the vectors


@pytest.mark.parametrize("case", VECTORS["raid5"], ids=lambda case: f"{case['block_len']}B")
def test_raid5_split_matches_vectors(case: dict[str, Any]) -> None:
    chunks, parity = raid5_split(bytes.fromhex(case["block_hex"]), case["nodes"])
    assert [chunk.hex() for chunk in chunks] == case["data_chunks_hex"]
    assert parity.hex() == case["parity_chunk_hex"]
    assert raid5_join(chunks) == bytes.fromhex(case["block_hex"])


@pytest.mark.parametrize("case", VECTORS["raid5"], ids=lambda case: f"{case['block_len']}B")
def test_raid5_any_chunk_rebuilds_from_parity(case: dict[str, Any]) -> None:
    chunks = [bytes.fromhex(chunk) for chunk in case["data_chunks_hex"]]
    parity = bytes.fromhex(case["parity_chunk_hex"])
    for missing in range(len(chunks)):
        others = chunks[:missing] + chunks[missing + 1 :]
        assert xor_chunks([*others, parity]) == chunks[missing]


def test_raid5_spec_example() -> None:
    chunks, parity = raid5_split(b"some data", 3)
    assert [c.hex() for c in chunks] == ["00000009736f6d", "65206461746100"]
    assert parity.hex() == "65206468070e6d"


@pytest.mark.parametrize("case", VECTORS["raid0"], ids=lambda case: case["block_id"])
def test_raid0_node_matches_vectors(case: dict[str, Any]) -> None:
    block_id = uuid.UUID(case["block_id"])
    assert block_id.int == int(case["uuid_as_128bit_int"])
    assert raid0_node_index(block_id, 2) == case["node_for_2_nodes"]
    assert raid0_node_index(block_id, 3) == case["node_for_3_nodes"]


@pytest.mark.parametrize("node_count", [2, 3])
async def test_raid0_stores_each_block_on_its_node_only(node_count: int) -> None:
    members = nodes(node_count)
    store = Raid0BlockStore(members)
    for case in VECTORS["raid0"]:
        block_id = uuid.UUID(case["block_id"])
        assert await store.create(ORG, block_id, block_id.bytes) is None
        expected = case[f"node_for_{node_count}_nodes"]
        for index, member in enumerate(members):
            held = await member.memory.read(ORG, block_id)
            assert (held == block_id.bytes) is (index == expected)
        assert await store.read(ORG, block_id) == block_id.bytes


async def test_raid0_failures_pass_through() -> None:
    members = nodes(2)
    store = Raid0BlockStore(members)
    block_id = uuid.UUID("00000000-0000-0000-0000-000000000005")  # node 1
    assert await store.read(ORG, block_id) is NOT_FOUND
    members[1].down = True
    assert await store.create(ORG, block_id, b"x") is UNAVAILABLE
    assert await store.read(ORG, block_id) is UNAVAILABLE
    other = uuid.UUID("e0000000-0000-4000-8000-00000000000e")  # node 0, still up
    assert await store.create(ORG, other, b"y") is None
    assert await store.read(ORG, other) == b"y"


@pytest.mark.parametrize("case", VECTORS["raid5"], ids=lambda case: f"{case['block_len']}B")
async def test_raid5_stores_chunk_i_on_node_i_parity_last(case: dict[str, Any]) -> None:
    members = nodes(case["nodes"])
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    block = bytes.fromhex(case["block_hex"])
    assert await store.create(ORG, block_id, block) is None
    expected = [*case["data_chunks_hex"], case["parity_chunk_hex"]]
    assert [(await m.memory.read(ORG, block_id)).hex() for m in members] == expected  # type: ignore[union-attr]
    assert await store.read(ORG, block_id) == block


# RAID1


async def test_raid1_writes_every_node_and_reads_back() -> None:
    members = nodes(3)
    store = Raid1BlockStore(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    assert [await m.memory.read(ORG, block_id) for m in members] == [b"data"] * 3
    assert await store.read(ORG, block_id) == b"data"


async def test_raid1_create_fails_if_any_node_fails_and_retry_succeeds() -> None:
    members = nodes(3)
    store = Raid1BlockStore(members)
    block_id = uuid.uuid4()
    members[2].down = True
    assert await store.create(ORG, block_id, b"data") is UNAVAILABLE
    assert await members[0].memory.read(ORG, block_id) == b"data"  # partially written
    members[2].down = False
    assert await store.create(ORG, block_id, b"data") is None  # the retry completes it
    assert await members[2].memory.read(ORG, block_id) == b"data"


async def test_raid1_read_from_any_healthy_node() -> None:
    members = nodes(3)
    store = Raid1BlockStore(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    members[0].down = True
    members[1].forget(block_id)
    assert await store.read(ORG, block_id) == b"data"
    members[2].down = True
    assert await store.read(ORG, block_id) is UNAVAILABLE  # a down node may have it
    members[0].down = members[2].down = False
    members[0].forget(block_id)
    members[2].forget(block_id)
    assert await store.read(ORG, block_id) is NOT_FOUND  # every node said so


async def test_raid1_empty_block_is_a_result() -> None:
    store = Raid1BlockStore(nodes(2))
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"") is None
    assert await store.read(ORG, block_id) == b""


async def test_raid1_read_answers_with_the_first_node_and_cancels_others() -> None:
    members = nodes(2)
    store = Raid1BlockStore(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    members[0].delay = 30.0  # a hung node
    async with asyncio.timeout(5):
        assert await store.read(ORG, block_id) == b"data"


async def test_raid_nodes_are_called_concurrently() -> None:
    members = nodes(3)
    for member in members:
        member.delay = 0.3
    for store in (Raid1BlockStore(members), Raid5BlockStore(members)):
        block_id = uuid.uuid4()
        async with asyncio.timeout(0.9):  # sequential calls would take 0.9 s
            assert await store.create(ORG, block_id, b"data") is None
            assert await store.read(ORG, block_id) == b"data"


# RAID5


async def test_raid5_read_with_any_one_node_down() -> None:
    members = nodes(4)
    store = Raid5BlockStore(members)
    block = bytes(range(256)) * 100
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, block) is None
    for down in range(4):
        members[down].down = True
        assert await store.read(ORG, block_id) == block
        members[down].down = False


async def test_raid5_read_consults_every_node_parity_included() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    for member in members:
        member.calls = 0
    assert await store.read(ORG, block_id) == b"data"
    assert [member.calls for member in members] == [1, 1, 1]


async def test_raid5_two_failures() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    members[0].down = members[2].down = True  # a data node and the parity node
    assert await store.read(ORG, block_id) is UNAVAILABLE
    members[2].down = False
    members[1].down = True  # two data nodes
    assert await store.read(ORG, block_id) is UNAVAILABLE
    assert await store.create(ORG, uuid.uuid4(), b"data") is UNAVAILABLE


async def test_raid5_create_degraded_with_one_node_down() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    members[1].down = True
    assert await store.create(ORG, block_id, b"degraded block") is None
    members[1].down = False  # back, but without the chunk: rebuilt from parity
    assert await members[1].memory.read(ORG, block_id) is NOT_FOUND
    assert await store.read(ORG, block_id) == b"degraded block"


async def test_raid5_not_found() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    assert await store.read(ORG, uuid.uuid4()) is NOT_FOUND
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    members[0].forget(block_id)
    members[2].forget(block_id)  # a lost chunk and no parity to rebuild it
    assert await store.read(ORG, block_id) is UNAVAILABLE


async def test_raid5_corrupted_chunks_are_unavailable() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    members[1].memory._blocks[ORG, block_id] = b"\x00"  # wrong length
    assert await store.read(ORG, block_id) is UNAVAILABLE


# Retried creates (the client retries a failed block_create with new bytes: a fresh nonce,
# the same length) and chunks that do not belong together


OLD = bytes(range(200)) * 3  # a failed attempt's bytes
NEW = bytes(reversed(range(200))) * 3  # its retry's: the same length, other bytes


def raid5_chunks(data: bytes, node_count: int) -> list[bytes]:
    chunks, parity = raid5_split(data, node_count)
    return [*chunks, parity]


async def test_raid5_failed_create_deletes_the_chunks_it_stored() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    members[1].down = members[2].down = True
    assert await store.create(ORG, block_id, OLD) is UNAVAILABLE
    assert members[0].held(block_id) is None  # node 0 stored its chunk, then lost it


async def test_raid5_retry_after_a_partial_failure_reads_the_new_content() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    members[1].down = members[2].down = True
    assert await store.create(ORG, block_id, OLD) is UNAVAILABLE
    members[1].down = members[2].down = False
    assert await store.create(ORG, block_id, NEW) is None
    assert [member.held(block_id) for member in members] == raid5_chunks(NEW, 3)
    assert await store.read(ORG, block_id) == NEW


async def test_raid5_retry_overwrites_chunks_a_failed_create_could_not_delete() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    members[0].refuse_deletes = True
    members[1].down = members[2].down = True
    assert await store.create(ORG, block_id, OLD) is UNAVAILABLE
    assert members[0].held(block_id) == raid5_chunks(OLD, 3)[0]  # left behind
    members[1].down = members[2].down = False
    assert await store.create(ORG, block_id, NEW) is None
    assert [member.held(block_id) for member in members] == raid5_chunks(NEW, 3)
    for down in range(3):
        members[down].down = True
        assert await store.read(ORG, block_id) == NEW
        members[down].down = False


async def test_raid5_degraded_retry_without_the_node_of_the_failed_attempt() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    members[1].down = members[2].down = True
    assert await store.create(ORG, block_id, OLD) is UNAVAILABLE
    # The retry succeeds degraded, without node 0, which had stored the first attempt.
    members[1].down = members[2].down = False
    members[0].down = True
    assert await store.create(ORG, block_id, NEW) is None
    assert await store.read(ORG, block_id) == NEW
    members[0].down = False
    assert await store.read(ORG, block_id) == NEW  # node 0 has no chunk: rebuilt


async def test_raid5_retry_with_a_different_length_reads_the_new_content() -> None:
    members = nodes(4)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    members[0].refuse_deletes = True
    members[2].down = members[3].down = True
    assert await store.create(ORG, block_id, b"short") is UNAVAILABLE
    members[2].down = members[3].down = False
    assert await store.create(ORG, block_id, NEW) is None
    assert await store.read(ORG, block_id) == NEW


async def test_raid5_stale_chunk_is_an_error_not_a_mix() -> None:
    # A failed attempt's chunk that could be neither deleted nor overwritten (its node was
    # down for the retry, which succeeded degraded), then that node is back.
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    members[0].refuse_deletes = True
    members[1].down = members[2].down = True
    assert await store.create(ORG, block_id, OLD) is UNAVAILABLE
    members[1].down = members[2].down = False
    members[0].down = True
    assert await store.create(ORG, block_id, NEW) is None
    members[0].down = False
    assert members[0].held(block_id) == raid5_chunks(OLD, 3)[0]
    assert await store.read(ORG, block_id) is UNAVAILABLE


@pytest.mark.parametrize("node_count", [3, 5])
async def test_raid5_chunks_of_two_contents_are_an_error_not_a_mix(node_count: int) -> None:
    # What the reference's RAID5 (which never overwrites) leaves after a retried create.
    members = nodes(node_count)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    old, new = raid5_chunks(OLD, node_count), raid5_chunks(NEW, node_count)
    for stale in range(node_count):
        for index, member in enumerate(members):
            member.put(block_id, old[index] if index == stale else new[index])
        assert await store.read(ORG, block_id) is UNAVAILABLE


@pytest.mark.parametrize("tampered", range(3))
async def test_raid5_tampered_chunk_is_an_error_not_data(tampered: int) -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, NEW) is None
    chunk = members[tampered].held(block_id)
    assert chunk is not None
    members[tampered].put(block_id, bytes([chunk[0] ^ 1]) + chunk[1:])  # one bit flipped
    assert await store.read(ORG, block_id) is UNAVAILABLE
    members[tampered].put(block_id, chunk)
    assert await store.read(ORG, block_id) == NEW


async def test_raid1_retry_after_a_partial_failure_reads_the_new_content() -> None:
    members = nodes(3)
    store = Raid1BlockStore(members)
    block_id = uuid.uuid4()
    members[2].down = True
    assert await store.create(ORG, block_id, OLD) is UNAVAILABLE
    members[2].down = False
    assert await store.create(ORG, block_id, NEW) is None
    assert [member.held(block_id) for member in members] == [NEW] * 3
    for answering in range(3):  # whichever node answers first
        for index, member in enumerate(members):
            member.down = index != answering
        assert await store.read(ORG, block_id) == NEW


@pytest.mark.parametrize(
    ("chunks", "problem"),
    [
        ([b"\x00\x00\x00\x05ab", b"cde\x00"], "different lengths"),
        ([b"\x00\x00\x00\x09", b"abcd"], "does not fit"),  # 9 bytes need 7 per chunk
        ([b"\x00\x00\x00\x01a", b"\x00" * 5], "does not fit"),  # 1 byte needs 3
        ([b"\x00\x00\x00\x03", b"abc\x01"], "padding is not zero"),
    ],
)
def test_raid5_join_refuses_chunks_not_laid_out_as_a_block(
    chunks: list[bytes], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        raid5_join(chunks)


@pytest.mark.parametrize("cls", [Raid0BlockStore, Raid1BlockStore, Raid5BlockStore])
async def test_raid_delete_removes_the_block_from_its_nodes(cls: type[Raid0BlockStore]) -> None:
    members = nodes(3)
    store = cls(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    assert await store.delete(ORG, block_id) is None
    assert [member.held(block_id) for member in members] == [None] * 3
    assert await store.read(ORG, block_id) is NOT_FOUND
    members[raid0_node_index(block_id, 3)].down = True
    assert await store.delete(ORG, block_id) is UNAVAILABLE


def test_raid5_needs_three_nodes() -> None:
    with pytest.raises(ValueError, match="at least 3 nodes"):
        Raid5BlockStore(nodes(2))
    with pytest.raises(ValueError, match="at least 3 nodes"):
        raid5_split(b"", 2)


async def test_close_closes_every_node() -> None:
    closed: list[int] = []

    class Node(MemoryBlockStore):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

        async def close(self) -> None:
            closed.append(self.index)

    await Raid1BlockStore([Node(0), Node(1)]).close()
    assert sorted(closed) == [0, 1]
