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
    """A memory node that can be switched to failing (UNAVAILABLE) or slow."""

    def __init__(self) -> None:
        self.memory = MemoryBlockStore()
        self.down = False
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

    def forget(self, block_id: uuid.UUID) -> None:
        del self.memory._blocks[ORG, block_id]


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


async def test_raid5_parity_read_only_when_needed() -> None:
    members = nodes(3)
    store = Raid5BlockStore(members)
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    members[2].calls = 0
    assert await store.read(ORG, block_id) == b"data"
    assert members[2].calls == 0


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
