"""Blocks through a running server whose blockstore is a block directory (`file:DIR`),
alone or as RAID nodes, on either metadata storage: a full disk is the `timeout` reply
with nothing left on disk and the metadata commands still working."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from parsec_server.api.codec import ID
from parsec_server.backend.blockstore.blockdir import BlockDirectory
from parsec_server.backend.config import FileBlockstoreConfig, RaidBlockstoreConfig
from tests.backend.blockstore.test_block_server import create_realm
from tests.fixtures.servers import ServerFactory, create_org


def block_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


async def test_blocks_in_a_directory_then_disk_full(
    server_factory: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = tmp_path / "blocks"  # the SQLite database is in tmp_path
    blocks.mkdir()
    async with server_factory(blockstore=FileBlockstoreConfig(blocks)) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            block_id = ID.new()
            block = bytes(range(256)) * 2048  # a 512 KiB block
            rep = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=block)
            assert rep == {"status": "ok"}
            assert await conn.cmd("block_read", block_id=block_id) == {
                "status": "ok",
                "block": block,
            }
            name = str(block_id.uuid)
            assert block_files(blocks) == [f"{org.organization_id}/{name[:2]}/{name}"]

            def disk_full(self: BlockDirectory, fd: int, data: memoryview) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(BlockDirectory, "_write", disk_full)
            other_id = ID.new()
            rep = await conn.cmd("block_create", block_id=other_id, realm_id=realm_id, block=b"x")
            assert rep == {"status": "timeout"}
            # No metadata and no file for the failed create; the rest is served.
            assert await conn.cmd("block_read", block_id=other_id) == {"status": "not_found"}
            assert block_files(blocks) == [f"{org.organization_id}/{name[:2]}/{name}"]
            assert (await conn.cmd("block_read", block_id=block_id))["status"] == "ok"
            assert (await conn.cmd("realm_status", realm_id=realm_id))["status"] == "ok"

            monkeypatch.undo()
            rep = await conn.cmd("block_create", block_id=other_id, realm_id=realm_id, block=b"x")
            assert rep == {"status": "ok"}


@pytest.mark.parametrize("db_url", ["MOCKED"])  # the RAID rules do not depend on it
async def test_raid1_and_raid5_of_directories_survive_a_lost_disk(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    for mode, count in (("RAID1", 2), ("RAID5", 3)):
        roots = [tmp_path / mode / f"disk{index}" for index in range(count)]
        for root in roots:
            root.mkdir(parents=True)
        nodes = tuple(FileBlockstoreConfig(root) for root in roots)
        config = RaidBlockstoreConfig(mode, nodes)  # type: ignore[arg-type]
        async with server_factory(blockstore=config) as server:
            org = await create_org(server)
            async with await org.alice.connect() as conn:
                realm_id = await create_realm(conn, org.alice)
                block_id = ID.new()
                block = os.urandom(100_001)
                rep = await conn.cmd(
                    "block_create", block_id=block_id, realm_id=realm_id, block=block
                )
                assert rep == {"status": "ok"}
                assert all(block_files(root) for root in roots)
                shutil.rmtree(roots[0])  # a disk lost
                assert await conn.cmd("block_read", block_id=block_id) == {
                    "status": "ok",
                    "block": block,
                }
