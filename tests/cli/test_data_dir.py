"""`parsec backend run --data-dir DIR`: SQLite in DIR/parsec.sqlite, blocks in DIR/blocks,
a new directory initialised at the first start, the data kept across restarts, a
database that needs migrating refused, and `--db`/`--blockstore` never given with it."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID
from parsec_server.backend.config import StartupError
from parsec_server.backend.data_dir import prepare_data_dir
from parsec_server.cli.backend_run import DEV_ADMINISTRATION_TOKEN, data_dir_args
from parsec_server.client.realm import create_realm
from tests.cli.test_backend_run_lifecycle import (
    PARSEC,
    ServerProcess,
    server_env,
    wait_ready,
)
from tests.fixtures import free_port
from tests.fixtures.servers import create_org_at


def test_data_dir_stands_for_db_and_blockstore(tmp_path: Path) -> None:
    expected = [
        "--db",
        f"sqlite:{tmp_path}/parsec.sqlite",
        "--blockstore",
        f"file:{tmp_path}/blocks",
    ]
    assert data_dir_args({"data_dir": str(tmp_path)}, {}) == expected
    assert data_dir_args({}, {"PARSEC_DATA_DIR": str(tmp_path)}) == expected
    assert data_dir_args({"db": "MOCKED"}, {"PARSEC_BLOCKSTORE": "MOCKED"}) == []


@pytest.mark.parametrize(
    ("given", "environ", "clash"),
    [
        ({"db": "MOCKED"}, {}, "--db"),
        ({}, {"PARSEC_BLOCKSTORE": "MOCKED"}, "--blockstore"),
        ({"db": "MOCKED", "blockstore": "MOCKED"}, {}, "--db or --blockstore"),
    ],
)
def test_data_dir_with_db_or_blockstore_is_a_usage_error(
    given: dict[str, object], environ: dict[str, str], clash: str
) -> None:
    with pytest.raises(click.UsageError) as info:
        data_dir_args({**given, "data_dir": "data"}, environ)
    assert info.value.message == (
        f"--data-dir (PARSEC_DATA_DIR) sets --db and --blockstore: do not give {clash} "
        "(nor their PARSEC_* variables) with it"
    )


def test_new_directories_are_initialised_once(tmp_path: Path) -> None:
    missing, empty, interrupted = tmp_path / "a" / "b", tmp_path / "empty", tmp_path / "half"
    empty.mkdir()
    (interrupted / "blocks").mkdir(parents=True)
    for data_dir in (missing, empty, interrupted):
        assert prepare_data_dir(data_dir)
        assert sorted(path.name for path in data_dir.iterdir()) == ["blocks", "parsec.sqlite"]
        assert not prepare_data_dir(data_dir)


def test_a_directory_that_is_not_a_data_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StartupError, match=r"is not empty and has no parsec.sqlite"):
        prepare_data_dir(tmp_path)
    with pytest.raises(StartupError, match=r"is not a directory$"):
        prepare_data_dir(tmp_path / "notes.txt")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


@contextlib.contextmanager
def dev_server(data_dir: Path, port: int) -> Iterator[ServerProcess]:
    command = [PARSEC, "backend", "run", "--dev", "--data-dir", str(data_dir), "--port", str(port)]
    process = subprocess.Popen(
        command, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = ServerProcess(process, port)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


async def test_dev_server_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "parsec-data", free_port()
    addr = BackendAddr("127.0.0.1", port, False)
    with dev_server(data_dir, port) as server:
        wait_ready(server)
        org = await create_org_at(addr, DEV_ADMINISTRATION_TOKEN, "Persisted")
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            block_id = ID.new()
            rep = await conn.cmd(
                "block_create", block_id=block_id, realm_id=realm_id, block=b"kept"
            )
            assert rep == {"status": "ok"}
    assert f"New data directory {data_dir}: initialised" in server.output
    assert (data_dir / "blocks" / "Persisted").is_dir()

    with dev_server(data_dir, port) as server:
        wait_ready(server)
        async with await org.alice.connect() as conn:
            assert await conn.cmd("block_read", block_id=block_id) == {
                "status": "ok",
                "block": b"kept",
            }
    assert "New data directory" not in server.output

    # A database that needs migrating: refused, as PostgreSQL's (with the traceback of
    # `--dev`, which is `--debug`).
    with sqlite3.connect(data_dir / "parsec.sqlite") as conn_sqlite:
        conn_sqlite.execute("DELETE FROM migration")
    conn_sqlite.close()
    with dev_server(data_dir, port) as server:
        assert server.wait(timeout=30) == 1
    assert "is not up to date" in server.output
    assert f"parsec backend migrate --db sqlite:{data_dir}/parsec.sqlite" in server.output
