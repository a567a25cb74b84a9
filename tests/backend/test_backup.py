"""`parsec backend backup`: a copy taken while a server writes blocks is consistent (every
block its database knows is in it), a server runs on it as a data directory (the
restore), and the command's failures are one line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

from click.testing import CliRunner

from parsec_server.api.codec import ID
from parsec_server.backend.backup import backup
from parsec_server.backend.config import BackendConfig, FileBlockstoreConfig
from parsec_server.backend.data_dir import prepare_data_dir
from parsec_server.cli.main import cli
from parsec_server.client.realm import create_realm
from tests.fixtures.servers import create_org, make_config, running_server


def data_dir_config(data_dir: Path) -> BackendConfig:
    return make_config(
        f"sqlite:{data_dir / 'parsec.sqlite'}", blockstore=FileBlockstoreConfig(data_dir / "blocks")
    )


async def test_backup_while_blocks_are_written_then_restore(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "backup"
    assert prepare_data_dir(data_dir)
    async with running_server(data_dir_config(data_dir)) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            before = [ID.new() for _ in range(5)]
            for block_id in before:
                rep = await conn.cmd(
                    "block_create", block_id=block_id, realm_id=realm_id, block=block_id.bytes
                )
                assert rep == {"status": "ok"}
            during: list[ID] = []

            async def write_more() -> None:
                while True:
                    block_id = ID.new()
                    rep = await conn.cmd(
                        "block_create", block_id=block_id, realm_id=realm_id, block=block_id.bytes
                    )
                    assert rep == {"status": "ok"}
                    during.append(block_id)

            writer = asyncio.create_task(write_more())
            await asyncio.sleep(0.2)
            report = await asyncio.to_thread(backup, *_paths(data_dir), out)
            await asyncio.sleep(0.1)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
    assert report.blocks_checked >= len(before)
    assert report.blocks_copied >= report.blocks_checked
    assert sorted(path.name for path in out.iterdir()) == ["blocks", "parsec.sqlite"]

    # Restore: a server on the copy serves what the database knew when it was copied.
    async with running_server(data_dir_config(out)) as server:
        alice = dataclasses.replace(org.alice, backend_addr=server.addr)
        async with await alice.connect() as conn:
            for block_id in before:
                assert await conn.cmd("block_read", block_id=block_id) == {
                    "status": "ok",
                    "block": block_id.bytes,
                }
            outcomes = [await conn.cmd("block_read", block_id=block_id) for block_id in during]
    assert during
    assert {rep["status"] for rep in outcomes} <= {"ok", "not_found"}
    assert outcomes[0]["status"] == "ok"  # written before the copy began


def _paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "parsec.sqlite", data_dir / "blocks"


def test_backup_command(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "out"
    runner = CliRunner()

    result = runner.invoke(cli, ["backend", "backup", "--data-dir", str(data_dir), str(out)])
    assert result.exit_code == 1
    assert result.output == f"Error: SQLite database {data_dir}/parsec.sqlite does not exist\n"

    assert prepare_data_dir(data_dir)
    result = runner.invoke(cli, ["backend", "backup", "--data-dir", str(data_dir), str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Database {data_dir}/parsec.sqlite copied to {out}/parsec.sqlite",
        "0 block files copied from " + f"{data_dir}/blocks; the 0 blocks of the database are "
        "all in the copy",
    ]

    result = runner.invoke(cli, ["backend", "backup", "--data-dir", str(data_dir), str(out)])
    assert result.exit_code == 1
    assert result.output == f"Error: {out} is not a new or empty directory\n"

    other = tmp_path / "other"
    command = ["backend", "backup", "--db", "postgresql://h/db", "--blockstore", "MOCKED"]
    result = runner.invoke(cli, [*command, str(other)])
    assert result.exit_code == 2
    assert "backup copies SQLite databases" in result.output
    result = runner.invoke(
        cli,
        ["backend", "backup", "--db", f"sqlite:{data_dir}/parsec.sqlite", "-", str(other)],
    )
    assert result.exit_code == 2


async def test_backup_refuses_a_copy_without_a_block_of_the_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert prepare_data_dir(data_dir)
    async with running_server(data_dir_config(data_dir)) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            block_id = ID.new()
            rep = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=b"x")
            assert rep == {"status": "ok"}
    (block_file,) = [path for path in (data_dir / "blocks").rglob("*") if path.is_file()]
    block_file.unlink()  # a lost block
    result = CliRunner().invoke(
        cli, ["backend", "backup", "--data-dir", str(data_dir), str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: 1 block(s) of the database have no file in ")
    assert not (tmp_path / "out" / "parsec.sqlite").exists()
