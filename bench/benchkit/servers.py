"""Starting the two servers the same way, on a storage: memory, PostgreSQL, S3 (moto), or
SQLite (ours only: the reference has no SQLite storage)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from benchkit.common import (
    HOST,
    MOTO_SERVER,
    OUR_PARSEC,
    OUR_PYTHON,
    REFERENCE_PARSEC,
    SERVER_START_TIMEOUT,
    free_port,
    pids_by_cmdline,
    process_tree,
)
from parsec_server.api.addr import BackendAddr

STORAGES = ("memory", "postgresql", "s3", "sqlite")
S3_REGION = "region1"
S3_KEY, S3_SECRET = "key", "secret"  # moto accepts any credentials
MIGRATE_TIMEOUT = 120.0

_OURS_FALLBACK = """
import logging, sys, tempfile
from pathlib import Path
import structlog
from parsec_server.api.addr import BackendAddr
from parsec_server.backend.config import BackendConfig, MockedBlockstoreConfig, MockedEmailConfig
from parsec_server.backend.asgi.server import run_server
port = int(sys.argv[1])
# As the CLI does by default: warnings and errors only (per-command debug logs cost CPU).
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
run_server(BackendConfig(
    db_url="MOCKED",
    blockstore=MockedBlockstoreConfig(),
    administration_token="s3cr3t",
    backend_addr=BackendAddr.from_url(f"parsec://127.0.0.1:{port}?no_ssl=true"),
    email=MockedEmailConfig(sender="x@y", tmpdir=Path(tempfile.mkdtemp())),
    host="127.0.0.1",
    port=port,
))
"""


def our_cli_works() -> bool:
    if not OUR_PARSEC.exists():
        return False
    try:
        done = subprocess.run(
            [str(OUR_PARSEC), "backend", "run", "--help"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def parsec_bin(server: str) -> Path:
    return REFERENCE_PARSEC if server == "reference" else OUR_PARSEC


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PARSEC_")}


def _server_env(name: str) -> dict[str, str]:
    env = _clean_env()
    if name == "ours":
        # All the load comes from 127.0.0.1: hundreds of connections may be opening at once
        # (docs/hardening.md). Counted all the same, as in production.
        env["PARSEC_MAX_PENDING_CONNECTIONS_PER_PEER"] = "1000000"
    return env


# --- storages ----------------------------------------------------------------------------


@dataclass
class Backing:
    """What one server start stores into: extra `backend run` arguments, and the processes
    doing the storage work (their CPU is measured beside the server's)."""

    description: str
    args: list[str] = field(default_factory=list)
    storage_pids: Callable[[], list[int]] | None = None


def _database_url(server_url: str, database: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


async def _pg_execute(server_url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_backend_pids(database: str) -> list[int]:
    # PostgreSQL titles its backends "postgres: <user> <database> <client> <state>".
    return pids_by_cmdline("postgres: ", f" {database} ")


class StorageEnv:
    """One storage kind for the whole run: `with StorageEnv(...) as env:`, then
    `with env.backing(server_name) as backing:` for each server start (a fresh PostgreSQL
    database, migrated by that server's own `backend migrate`, or a fresh S3 bucket)."""

    def __init__(self, kind: str, postgresql_url: str, log_dir: Path) -> None:
        self.kind = kind
        self.postgresql_url = postgresql_url
        self.log_dir = log_dir
        self.moto: subprocess.Popen[bytes] | None = None
        self.moto_port = 0
        self.created_databases: list[str] = []

    def __enter__(self) -> StorageEnv:
        if self.kind == "postgresql":
            asyncio.run(_pg_execute(self.postgresql_url, "SELECT 1"))
        elif self.kind == "s3":
            self._start_moto()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.moto is not None:
            stop_process(self.moto)
            self.moto = None
        for database in self.created_databases:  # normally dropped already
            self._drop_database(database)

    def describe(self) -> str:
        if self.kind == "postgresql":
            return f"PostgreSQL at {self.postgresql_url} (--db <fresh database> -b POSTGRESQL)"
        if self.kind == "s3":
            return (
                f"S3: moto server on {HOST}:{self.moto_port} (-b s3:http\\://{HOST}\\:"
                f"{self.moto_port}:{S3_REGION}:<bucket>:{S3_KEY}:{S3_SECRET}), metadata in memory"
            )
        if self.kind == "sqlite":
            return (
                f"SQLite: a fresh file in {self.log_dir} per server start (--db sqlite:<file> "
                "-b MOCKED), in the server's process: its CPU is in the server's"
            )
        return "memory (--dev: --db MOCKED -b MOCKED)"

    @contextmanager
    def backing(self, server: str) -> Iterator[Backing]:
        if self.kind == "postgresql":
            with self._postgresql(server) as backing:
                yield backing
        elif self.kind == "s3":
            yield self._s3(server)
        elif self.kind == "sqlite":
            yield self._sqlite(server)
        else:
            yield Backing("memory")

    # SQLite: a fresh file per server start, migrated by that server (ours only).

    def _sqlite(self, server: str) -> Backing:
        if server == "reference":
            raise RuntimeError("the reference server has no SQLite storage")
        path = self.log_dir / f"parsec-{uuid.uuid4().hex[:10]}.sqlite"
        done = subprocess.run(
            [str(parsec_bin(server)), "backend", "migrate", "--db", f"sqlite:{path}"],
            capture_output=True,
            timeout=MIGRATE_TIMEOUT,
            check=False,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"{server}: `backend migrate` failed:\n{output}")
        # The storage works in the server's own threads: no separate process to measure.
        return Backing(f"file {path}", ["--db", f"sqlite:{path}", "-b", "MOCKED"])

    # PostgreSQL: a fresh database per server start, migrated by that server.

    @contextmanager
    def _postgresql(self, server: str) -> Iterator[Backing]:
        database = f"parsec_bench_{server}_{uuid.uuid4().hex[:10]}"
        url = _database_url(self.postgresql_url, database)
        asyncio.run(
            _pg_execute(
                self.postgresql_url,
                f"CREATE DATABASE \"{database}\" TEMPLATE template0 ENCODING 'UTF8'",
            )
        )
        self.created_databases.append(database)
        try:
            done = subprocess.run(
                [str(parsec_bin(server)), "backend", "migrate", "--db", url],
                capture_output=True,
                timeout=MIGRATE_TIMEOUT,
                check=False,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
                raise RuntimeError(f"{server}: `backend migrate` failed:\n{output}")
            yield Backing(
                f"database {database}",
                ["--db", url, "-b", "POSTGRESQL"],
                lambda: _pg_backend_pids(database),
            )
        finally:
            self._drop_database(database)

    def _drop_database(self, database: str) -> None:
        if database not in self.created_databases:
            return
        try:
            sql = f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
            asyncio.run(_pg_execute(self.postgresql_url, sql))
        except Exception as exc:
            print(f"\n  ! could not drop database {database}: {exc!r}")
        else:
            self.created_databases.remove(database)

    # S3: one moto server for the run, a fresh bucket per server start.

    def _start_moto(self) -> None:
        if not MOTO_SERVER.exists():
            raise RuntimeError(f"{MOTO_SERVER} not found (moto[server] is a test dependency)")
        self.moto_port = free_port()
        log = self.log_dir / f"moto-{self.moto_port}.log"
        with log.open("wb") as out:
            self.moto = subprocess.Popen(
                [str(MOTO_SERVER), "-H", HOST, "-p", str(self.moto_port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            )
        wait_for_port(self.moto_port, self.moto, "moto", log)

    def _s3(self, server: str) -> Backing:
        import boto3  # type: ignore[import-untyped, unused-ignore]  # installed with moto

        bucket = f"bench-{server}-{uuid.uuid4().hex[:8]}"
        client = boto3.client(
            "s3",
            endpoint_url=f"http://{HOST}:{self.moto_port}",
            region_name=S3_REGION,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
        )
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": S3_REGION}
        )
        # As the program must receive it (no shell here): `\:` is a literal colon.
        value = f"s3:http\\://{HOST}\\:{self.moto_port}:{S3_REGION}:{bucket}:{S3_KEY}:{S3_SECRET}"
        moto = self.moto
        assert moto is not None
        return Backing(f"bucket {bucket}", ["-b", value], lambda: process_tree(moto.pid))


# --- servers -----------------------------------------------------------------------------


def server_command(
    server: str, port: int, our_cli: bool, backing: Backing | None = None
) -> list[str]:
    """How a server is started; both the same way when our CLI exists."""
    extra = backing.args if backing is not None else []
    args = ["backend", "run", "--dev", "-H", HOST, "-P", str(port), *extra]
    if server == "reference":
        return [str(REFERENCE_PARSEC), *args]
    if our_cli:
        return [str(OUR_PARSEC), *args]
    if extra:
        raise RuntimeError("our CLI is not usable: only the memory storage can be measured")
    return [str(OUR_PYTHON), "-c", _OURS_FALLBACK, str(port)]


@dataclass
class RunningServer:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    backing: Backing

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def addr(self) -> BackendAddr:
        return BackendAddr.from_url(f"parsec://{HOST}:{self.port}?no_ssl=true")

    def storage_pids(self) -> list[int]:
        return self.backing.storage_pids() if self.backing.storage_pids else []

    def log_tail(self, lines: int = 20) -> str:
        return _log_tail(self.log_path, lines)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{_log_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} not listening after {SERVER_START_TIMEOUT} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def running_server(
    name: str, our_cli: bool, log_dir: Path, storage: StorageEnv
) -> Iterator[RunningServer]:
    with storage.backing(name) as backing:
        port = free_port()
        log_path = log_dir / f"{name}-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                server_command(name, port, our_cli, backing),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(name),
            )
        server = RunningServer(name, port, process, log_path, backing)
        try:
            wait_for_port(port, process, f"{name} server", log_path)
            yield server
        finally:
            stop_process(process)
