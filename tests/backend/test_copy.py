"""`parsec backend copy`: a data directory (SQLite, block directory) moved up to
PostgreSQL (with the `POSTGRESQL` blockstore) and back down to another data directory;
after each copy a server on the target serves the clients as before and goes on
creating rows. A non-empty target needs --resume; an interrupted copy resumed copies
nothing twice; a differing target is reported."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from parsec_server.api.codec import ID
from parsec_server.api.ids import RealmRole, UserProfile
from parsec_server.backend.config import (
    BackendConfig,
    FileBlockstoreConfig,
    PostgreSQLBlockstoreConfig,
)
from parsec_server.backend.data_dir import database_path, prepare_data_dir
from parsec_server.backend.storage.copy.endpoint import Row
from parsec_server.backend.storage.copy.run import check_tables, columns_of, copy_tables
from parsec_server.backend.storage.copy.sqlite_endpoint import SQLiteEndpoint
from parsec_server.cli.main import cli
from parsec_server.client.device import LocalDevice
from parsec_server.client.realm import create_realm, share
from parsec_server.client.user import create_user
from tests.backend.realm_helpers import vlob_create, vlob_read, vlob_update
from tests.fixtures.servers import Organization, create_org, make_config, running_server


def data_dir_config(data_dir: Path) -> BackendConfig:
    return make_config(
        f"sqlite:{database_path(data_dir)}", blockstore=FileBlockstoreConfig(data_dir / "blocks")
    )


@dataclasses.dataclass
class Content:
    org: Organization
    realm_id: ID
    vlob_id: ID
    blocks: dict[ID, bytes]


async def populate(config: BackendConfig) -> Content:
    async with running_server(config) as server:
        org = await create_org(server)
        await create_org(server)  # another organization, with the same user names
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            await share(conn, org.alice, realm_id, "bob", RealmRole.CONTRIBUTOR, b"hello bob")
            vlob_id = ID.new()
            assert (await vlob_create(conn, realm_id, vlob_id))["status"] == "ok"
            assert (await vlob_update(conn, vlob_id, 2, b"v2"))["status"] == "ok"
            blocks = {ID.new(): bytes([index]) * (1000 * index) for index in range(1, 6)}
            for block_id, data in blocks.items():
                rep = await conn.cmd(
                    "block_create", block_id=block_id, realm_id=realm_id, block=data
                )
                assert rep == {"status": "ok"}
    return Content(org, realm_id, vlob_id, blocks)


def at(device: LocalDevice, server: Any) -> LocalDevice:
    return dataclasses.replace(device, backend_addr=server.addr)


async def check_served(config: BackendConfig, content: Content) -> None:
    """What the clients had is there, and the server goes on creating rows of every kind."""
    async with running_server(config) as server:
        alice, bob = at(content.org.alice, server), at(content.org.bob, server)
        async with await bob.connect() as conn:
            for block_id, data in content.blocks.items():
                rep = await conn.cmd("block_read", block_id=block_id)
                assert rep == {"status": "ok", "block": data}
            rep = await vlob_read(conn, content.vlob_id)
            assert (rep["status"], rep["version"], rep["blob"]) == ("ok", 2, b"v2")
            messages = await conn.cmd("message_get", offset=0)
            assert [message["body"] for message in messages["messages"]] == [b"hello bob"]
        async with await alice.connect() as conn:
            await create_user(conn, alice, "carol", "pc", None, UserProfile.STANDARD)
            realm_id = await create_realm(conn, alice)
            assert (await vlob_create(conn, realm_id, ID.new()))["status"] == "ok"
            block_id = ID.new()
            rep = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=b"new")
            assert rep == {"status": "ok"}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, ["backend", "copy", *args])


async def invoke_async(*args: str) -> Any:
    """The command runs its own event loop: in a thread of its own."""
    return await asyncio.to_thread(invoke, *args)


async def test_up_to_postgresql_and_back_down(tmp_path: Path, empty_postgresql_url: str) -> None:
    source, back = tmp_path / "source", tmp_path / "back"
    assert prepare_data_dir(source)
    content = await populate(data_dir_config(source))

    up = ["--from-data-dir", str(source), "--to-db", empty_postgresql_url]
    result = await invoke_async(*up, "--to-blockstore", "POSTGRESQL")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "blocks: 5 (5 copied, 0 already there)" in lines
    assert "organization: 2 rows (2 copied, 0 already there)" in lines
    assert lines[-1].startswith("Checked: every row of the 17 tables and every one of the 5")

    # Again: refused, then resumed with nothing to do.
    result = await invoke_async(*up, "--to-blockstore", "POSTGRESQL")
    assert result.exit_code == 1
    assert result.output.startswith("Error: postgresql://")
    assert "is not empty: give --resume" in result.output
    result = await invoke_async(*up, "--to-blockstore", "POSTGRESQL", "--resume")
    assert result.exit_code == 0, result.output
    assert "blocks: 5 (0 copied, 5 already there)" in result.stdout.splitlines()

    # Down again, from PostgreSQL to a new data directory.
    down = ["--from-db", empty_postgresql_url, "--from-blockstore", "POSTGRESQL"]
    result = await invoke_async(*down, "--to-data-dir", str(back))
    assert result.exit_code == 0, result.output
    assert "blocks: 5 (5 copied, 0 already there)" in result.stdout.splitlines()

    await check_served(
        make_config(empty_postgresql_url, blockstore=PostgreSQLBlockstoreConfig()), content
    )
    await check_served(data_dir_config(back), content)


class FailingEndpoint(SQLiteEndpoint):
    """Stops (as a crash would) after `allowed` inserts."""

    allowed = 3

    async def insert(self, table: str, columns: Any, rows: Any) -> None:
        if self.allowed == 0:
            raise RuntimeError("interrupted")
        self.allowed -= 1
        await super().insert(table, columns, rows)


async def test_an_interrupted_copy_resumed_copies_nothing_twice(tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    assert prepare_data_dir(source_dir)
    await populate(data_dir_config(source_dir))
    source = await SQLiteEndpoint.open_source(database_path(source_dir))
    target_path = tmp_path / "target.sqlite"
    failing = await FailingEndpoint.open_target(target_path)
    try:
        columns = await columns_of(source, failing)
        with pytest.raises(RuntimeError, match="interrupted"):
            await copy_tables(source, failing, columns, batch_rows=2)  # several per table
        await failing.close()
        target = await SQLiteEndpoint.open_target(target_path)
        try:
            reports = await copy_tables(source, target, columns, batch_rows=2)
            assert sum(report.present for report in reports) == 6  # the 3 batches of 2 rows
            assert await check_tables(source, target, columns, reports) == []
            assert all(report.checked for report in reports)
        finally:
            await target.close()
    finally:
        await source.close()


async def test_a_differing_target_is_reported(tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    assert prepare_data_dir(source_dir)
    await populate(data_dir_config(source_dir))
    source = await SQLiteEndpoint.open_source(database_path(source_dir))
    target = await SQLiteEndpoint.open_target(tmp_path / "target.sqlite")
    try:
        columns = await columns_of(source, target)
        reports = await copy_tables(source, target, columns)
        changed: Row = (b"tampered",)
        await target.update("vlob_atom", ["_id"], ["blob"], [(1, *changed)])
        differing = await check_tables(source, target, columns, reports)
        assert differing == ["vlob_atom (2 rows in the source, 2 in the target)"]
    finally:
        await source.close()
        await target.close()


def test_usage_errors(tmp_path: Path) -> None:
    result = invoke("--from-data-dir", str(tmp_path), "--to-db", "sqlite:x")
    assert result.exit_code == 2
    assert "Give --to-data-dir, or --to-db and --to-blockstore" in result.output
    result = invoke("--from-data-dir", str(tmp_path), "--to-data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "The source and the target are the same database" in result.output
    result = invoke("--from-data-dir", str(tmp_path / "nothing"), "--to-data-dir", "other")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: SQLite database {tmp_path}/nothing/parsec.sqlite does not exist\n"
    )
