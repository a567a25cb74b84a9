"""What is particular to the SQLite storage (the commands themselves run on every storage:
the `db_url` fixture): durability across `kill -9`, the durable settings, concurrent
writes queued for the one writer (never "database is locked", even behind another
process's lock), and the schema mirroring the PostgreSQL one (for `parsec backend copy`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID
from parsec_server.backend.storage.sqlite.database import sqlite_database
from parsec_server.client.realm import create_realm
from tests.backend.realm_helpers import OK, vlob_create, vlob_read, vlob_update
from tests.fixtures import free_port
from tests.fixtures.servers import (
    ADMINISTRATION_TOKEN,
    Organization,
    create_org,
    create_org_at,
    make_config,
    new_organization_id,
    running_server,
)

PARSEC = str(Path(sys.executable).parent / "parsec")


@contextmanager
def server_process(path: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`parsec backend run` on the file at `path`, as an operator starts it (real
    settings: synchronous=FULL), listening on `port` once yielded."""
    env = {
        **os.environ,
        "PARSEC_DB": f"sqlite:{path}",
        "PARSEC_BLOCKSTORE": "MOCKED",
        "PARSEC_ADMINISTRATION_TOKEN": ADMINISTRATION_TOKEN,
        "PARSEC_BACKEND_ADDR": f"parsec://127.0.0.1:{port}?no_ssl=true",
        "PARSEC_EMAIL_HOST": "MOCKED",
        "PARSEC_PORT": str(port),
    }
    proc = subprocess.Popen(
        [PARSEC, "backend", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    output, _ = proc.communicate(timeout=20)
                    raise AssertionError(f"server did not start: {output!r}") from None
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)


def test_an_acknowledged_write_survives_kill_9(migrated_sqlite_path: Path) -> None:
    port = free_port()
    addr = BackendAddr("127.0.0.1", port, False)
    vlob_id, realm_id = ID.new(), ID.new()

    async def write() -> Organization:
        org = await create_org_at(addr, ADMINISTRATION_TOKEN, new_organization_id())
        async with await org.alice.connect() as conn:
            await create_realm(conn, org.alice, realm_id)
            assert await vlob_create(conn, realm_id, vlob_id, b"v1") == OK
            assert await vlob_update(conn, vlob_id, 2, b"v2") == OK
        return org

    with server_process(migrated_sqlite_path, port) as proc:
        org = asyncio.run(write())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    # Killed: the writes are in the WAL, not checkpointed into the database file.
    assert Path(f"{migrated_sqlite_path}-wal").stat().st_size > 0

    async def read() -> None:
        async with await org.alice.connect() as conn:
            rep = await vlob_read(conn, vlob_id)
            assert (rep["status"], rep["version"], rep["blob"]) == ("ok", 2, b"v2")

    with server_process(migrated_sqlite_path, port):
        asyncio.run(read())


async def test_the_server_commits_durably(migrated_sqlite_path: Path) -> None:
    """synchronous=FULL: a commit waits for the WAL to reach the disk (NORMAL would let
    a power cut lose acknowledged writes, docs/storage-sqlite.md)."""
    async with sqlite_database(migrated_sqlite_path) as database:

        def settings(conn: sqlite3.Connection) -> tuple[int, str, int]:
            return (
                conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA journal_mode").fetchone()[0],
                conn.execute("PRAGMA foreign_keys").fetchone()[0],
            )

        assert await database.on_writer(settings) == (2, "wal", 1)  # 2: FULL


async def test_concurrent_writes_all_succeed_in_order(migrated_sqlite_url: str) -> None:
    """Many writers at once, with the real settings: they queue for the writer, none
    fails, and the realm's change log numbers them 1..n."""
    config = make_config(migrated_sqlite_url, sqlite_synchronous="FULL")
    async with running_server(config) as server:
        org = await create_org(server)
        realm_id = ID.new()
        connections = [await org.alice.connect() for _ in range(8)]
        try:
            await create_realm(connections[0], org.alice, realm_id)

            async def create_some(index: int) -> None:
                conn = connections[index]  # one command at a time per connection
                for _ in range(10):
                    assert await vlob_create(conn, realm_id, ID.new()) == OK

            await asyncio.gather(*(create_some(i) for i in range(8)))
            rep = await connections[1].cmd(
                "vlob_poll_changes", realm_id=realm_id, last_checkpoint=0
            )
        finally:
            for conn in connections:
                await conn.close()
    assert rep["status"] == "ok"
    assert rep["current_checkpoint"] == 80
    assert len(rep["changes"]) == 80


async def test_writes_wait_for_another_process_holding_the_lock(
    migrated_sqlite_path: Path, migrated_sqlite_url: str
) -> None:
    """Another process (a backup, `migrate`) holding the write lock delays the writes (busy
    timeout), without failing them."""
    async with running_server(make_config(migrated_sqlite_url)) as server:
        org = await create_org(server)
        realm_id = ID.new()
        async with await org.alice.connect() as conn:
            await create_realm(conn, org.alice, realm_id)
            locked, release = threading.Event(), threading.Event()

            def hold_the_lock() -> None:
                other = sqlite3.connect(migrated_sqlite_path, isolation_level=None)
                try:
                    other.execute("BEGIN IMMEDIATE")
                    locked.set()
                    release.wait(10)
                    other.execute("COMMIT")
                finally:
                    other.close()

            holder = threading.Thread(target=hold_the_lock)
            holder.start()
            try:
                await asyncio.to_thread(locked.wait, 10)
                write = asyncio.ensure_future(vlob_create(conn, realm_id, ID.new()))
                await asyncio.sleep(0.5)
                assert not write.done()  # waiting for the lock
                release.set()
                assert await write == OK
            finally:
                release.set()
                await asyncio.to_thread(holder.join, 10)


# Tables of the PostgreSQL schema that SQLite has no use for: the POSTGRESQL blockstore's,
# and the record of the extras migrations (SQLite has one series of migrations).
POSTGRESQL_ONLY_TABLES = {"block_data", "ext_migration"}


async def postgresql_layout(url: str) -> tuple[dict[str, list[str]], set[str]]:
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        )
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
    finally:
        await conn.close()
    tables: dict[str, list[str]] = {}
    for row in columns:
        tables.setdefault(row["table_name"], []).append(row["column_name"])
    return tables, {row["indexname"] for row in indexes if row["indexname"].startswith("ext_")}


def sqlite_layout(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    conn = sqlite3.connect(path)
    try:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"
            )
        ]
        tables = {
            name: [column[1] for column in conn.execute(f"PRAGMA table_info({name})")]
            for name in names
        }
        indexes = {
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")
            if name.startswith("ext_")
        }
    finally:
        conn.close()
    return tables, indexes


async def test_the_schema_mirrors_the_postgresql_one(
    migrated_sqlite_path: Path, migrated_postgresql_url: str
) -> None:
    """Same tables, same columns in the same order, same extra indexes: a database copies
    table by table between the storages (docs/storage-sqlite.md)."""
    pg_tables, pg_indexes = await postgresql_layout(migrated_postgresql_url)
    sqlite_tables, sqlite_indexes = sqlite_layout(migrated_sqlite_path)

    for name in POSTGRESQL_ONLY_TABLES:
        del pg_tables[name]
    assert sqlite_tables == pg_tables
    # Not the indexes of PostgreSQL's constraints (`*_pkey`, `*_key`): SQLite's are unnamed.
    assert sqlite_indexes == {name for name in pg_indexes if not name.endswith("key")}
