from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from click.testing import CliRunner

from parsec_server.backend.storage.postgresql.migrations import (
    check_migrations_applied,
    read_schema_levels,
)
from parsec_server.backend.storage.sqlite.migrations import (
    get_last_applied_migration as get_sqlite_level,
)
from parsec_server.backend.storage.sqlite.migrations import migrate_file
from parsec_server.cli.backend_migrate import migrate
from tests.backend.schema_helpers import (
    EXTRAS_FILE_NAMES,
    REFERENCE_FILE_NAMES,
    build_reference,
    catalog,
    connect,
    data_snapshot,
)
from tests.fixtures.postgresql import run_async

FILE_NAMES = REFERENCE_FILE_NAMES
EXTRAS_OUTPUT = "".join(f"{name} ✔\n" for name in EXTRAS_FILE_NAMES)
FIRST_RUN_OUTPUT = "Migrate ✔\n" + "".join(
    f"{name} ✔\n" for name in [*FILE_NAMES, *EXTRAS_FILE_NAMES]
)
SECOND_RUN_OUTPUT = "Migrate ✔\n" + "".join(
    f"{name} (already applied)\n" for name in [*FILE_NAMES, *EXTRAS_FILE_NAMES]
)
DRY_RUN_OUTPUT = FIRST_RUN_OUTPUT + "Dry run: nothing was changed\n"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in (
        "PARSEC_DB",
        "PARSEC_DB_FIRST_TRIES_NUMBER",
        "PARSEC_DB_FIRST_TRIES_SLEEP",
        "PARSEC_DEBUG",
    ):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


@pytest.fixture
def unreachable_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there any more
    return f"postgresql://postgres@127.0.0.1:{port}/parsec"


def last_applied_migration(url: str) -> int:
    async def query() -> int:
        conn = await asyncpg.connect(url)
        try:
            return (await read_schema_levels(conn)).level
        finally:
            await conn.close()

    return run_async(query())


async def tables(url: str) -> list[str]:
    async with connect(url) as conn:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return [row[0] for row in rows]


def run_sql(url: str, sql: str) -> None:
    async def execute() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_async(execute())


def test_migrate_applies_every_migration_then_reports_them_applied(
    runner: CliRunner, empty_postgresql_url: str
) -> None:
    result = runner.invoke(migrate, ["--db", empty_postgresql_url])
    assert result.exit_code == 0, result.output
    assert result.stdout == FIRST_RUN_OUTPUT

    result = runner.invoke(migrate, ["--db", empty_postgresql_url])
    assert result.exit_code == 0, result.output
    assert result.stdout == SECOND_RUN_OUTPUT


def test_migrate_reads_the_database_from_parsec_db(
    runner: CliRunner, empty_postgresql_url: str
) -> None:
    result = runner.invoke(migrate, [], env={"PARSEC_DB": empty_postgresql_url})

    assert result.exit_code == 0, result.output
    assert result.stdout == FIRST_RUN_OUTPUT
    assert last_applied_migration(empty_postgresql_url) == 5


def test_migrate_dry_run_applies_nothing(runner: CliRunner, empty_postgresql_url: str) -> None:
    result = runner.invoke(migrate, ["--db", empty_postgresql_url, "--dry-run"])

    assert result.exit_code == 0, result.output
    assert result.stdout == DRY_RUN_OUTPUT
    assert last_applied_migration(empty_postgresql_url) == 0


def test_migrate_dry_run_of_a_takeover_changes_neither_schema_nor_data(
    runner: CliRunner, empty_postgresql_url: str
) -> None:
    async def state() -> tuple[list[str], dict[str, list[str]]]:
        async with connect(empty_postgresql_url) as conn:
            return await catalog(conn), await data_snapshot(conn)

    async def setup() -> None:
        async with connect(empty_postgresql_url) as conn:
            await build_reference(conn, 4)

    run_async(setup())
    before = run_async(state())

    result = runner.invoke(migrate, ["--db", empty_postgresql_url, "--dry-run"])

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Migrate ✔\n"
        + "".join(f"{name} (already applied)\n" for name in FILE_NAMES[:4])
        + "0005_redacted_certificates.sql ✔\n"
        + EXTRAS_OUTPUT
        + "Dry run: nothing was changed\n"
    )
    assert run_async(state()) == before


def test_migrate_refuses_an_unknown_layout_in_one_line(
    runner: CliRunner, empty_postgresql_url: str
) -> None:
    run_sql(empty_postgresql_url, "CREATE TABLE human (x INTEGER)")

    result = runner.invoke(migrate, ["--db", empty_postgresql_url])

    assert result.exit_code == 1, result.output
    assert result.stdout == (
        "Migrate ✘\n"
        "Error: Unknown database layout: Parsec objects without an `organization` table "
        "(found human); nothing was changed\n"
    )
    assert "Traceback" not in result.output
    assert run_async(tables(empty_postgresql_url)) == ["human"]


def test_migrate_refuses_a_database_in_use_unless_forced(
    runner: CliRunner, empty_postgresql_url: str
) -> None:
    async def with_other_connection(args: list[str]) -> object:
        async with connect(empty_postgresql_url, "parsec-server"):
            return await asyncio.to_thread(runner.invoke, migrate, args)

    result = run_async(with_other_connection(["--db", empty_postgresql_url]))
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    assert result.stdout == (  # type: ignore[attr-defined]
        "Migrate ✘\n"
        "Error: database in use by 1 other connection(s) (a running server?); "
        "stop it or pass --force; nothing was changed\n"
    )

    result = run_async(with_other_connection(["--db", empty_postgresql_url, "--force"]))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert result.stdout == (  # type: ignore[attr-defined]
        FIRST_RUN_OUTPUT + "note: going on (--force) with 1 other connection(s)\n"
    )


def test_migrate_refuses_a_url_of_another_database(runner: CliRunner) -> None:
    for url in ("MOCKED", "mysql://localhost/parsec", "file:///tmp/db"):
        result = runner.invoke(migrate, ["--db", url])

        assert result.exit_code == 2, result.output
        assert (
            'Error: Invalid value for "--db": '
            "Must start with `postgresql://`, `postgres://` or `sqlite:`"
        ) in result.stderr
        assert "Migrate" not in result.stdout


# --- SQLite --------------------------------------------------------------------------------

SQLITE_FIRST_RUN_OUTPUT = "Migrate ✔\n0001_initial.sql ✔\n"
SQLITE_SECOND_RUN_OUTPUT = "Migrate ✔\n0001_initial.sql (already applied)\n"


def sqlite_level(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return get_sqlite_level(conn)
    finally:
        conn.close()


def test_migrate_creates_the_sqlite_file_and_its_directory(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "var" / "lib" / "parsec" / "parsec.sqlite"

    result = runner.invoke(migrate, ["--db", f"sqlite:{path}"])
    assert result.exit_code == 0, result.output
    assert result.stdout == SQLITE_FIRST_RUN_OUTPUT
    assert sqlite_level(path) == 1

    result = runner.invoke(migrate, ["--db", f"sqlite:{path}"])
    assert result.exit_code == 0, result.output
    assert result.stdout == SQLITE_SECOND_RUN_OUTPUT


def test_migrate_reads_a_relative_sqlite_path_from_parsec_db(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(migrate, [], env={"PARSEC_DB": "sqlite:data/parsec.sqlite"})

    assert result.exit_code == 0, result.output
    assert result.stdout == SQLITE_FIRST_RUN_OUTPUT
    assert sqlite_level(tmp_path / "data" / "parsec.sqlite") == 1


def test_migrate_dry_run_creates_no_sqlite_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "data" / "parsec.sqlite"

    result = runner.invoke(migrate, ["--db", f"sqlite:{path}", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert result.stdout == SQLITE_FIRST_RUN_OUTPUT + "Dry run: nothing was changed\n"
    assert not path.parent.exists()


def test_migrate_reports_a_failing_sqlite_migration(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "parsec.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE organization (x INTEGER)")
    conn.close()

    result = runner.invoke(migrate, ["--db", f"sqlite:{path}"])

    assert result.exit_code == 0, result.output
    assert result.stdout == ("Migrate ✔\n0001_initial.sql ✘: table organization already exists\n")
    assert sqlite_level(path) == 0  # rolled back whole


def test_migrate_on_a_file_that_is_not_a_database_prints_one_error_line(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "parsec.sqlite"
    path.write_bytes(b"not a database" * 1000)

    result = runner.invoke(migrate, ["--db", f"sqlite:{path}"])

    assert result.exit_code == 1
    assert result.stdout == "Migrate ✘\nError: file is not a database\n"


def test_concurrent_sqlite_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "parsec.sqlite"
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: migrate_file(path), range(4)))

    statuses = sorted(o[0].status.value for o in outcomes)
    assert statuses == ["already_applied"] * 3 + ["applied"]
    assert sqlite_level(path) == 1


def test_migrate_requires_a_database(runner: CliRunner) -> None:
    result = runner.invoke(migrate, [])

    assert result.exit_code == 2
    assert "--db" in result.stderr


def test_migrate_on_unreachable_database_prints_one_error_line(
    runner: CliRunner, unreachable_url: str
) -> None:
    port = unreachable_url.split(":")[-1].split("/")[0]

    result = runner.invoke(migrate, ["--db", unreachable_url])

    assert result.exit_code == 1
    assert result.stdout == (
        f"Migrate ✘\nError: [Errno 111] Connect call failed ('127.0.0.1', {port})\n"
    )
    assert "Traceback" not in result.output


def test_migrate_with_debug_raises_the_connection_error(
    runner: CliRunner, unreachable_url: str
) -> None:
    result = runner.invoke(migrate, ["--db", unreachable_url, "--debug"])

    assert result.exit_code == 1
    assert isinstance(result.exception, OSError)

    result = runner.invoke(migrate, ["--db", unreachable_url], env={"PARSEC_DEBUG": "yes"})
    assert isinstance(result.exception, OSError)


def test_migrate_retries_the_first_connection(runner: CliRunner, unreachable_url: str) -> None:
    result = runner.invoke(
        migrate,
        ["--db", unreachable_url],
        env={"PARSEC_DB_FIRST_TRIES_NUMBER": "3", "PARSEC_DB_FIRST_TRIES_SLEEP": "0"},
    )

    assert result.exit_code == 1
    assert result.stdout.startswith("Migrate ✘\nError: ")
    retries = [line for line in result.stderr.splitlines() if "retrying" in line]
    assert len(retries) == 2
    assert "tries remaining: 1" in retries[-1]


@pytest.mark.parametrize("value", ["on", "off", "maybe"])
def test_migrate_refuses_an_invalid_parsec_debug(
    runner: CliRunner, unreachable_url: str, value: str
) -> None:
    result = runner.invoke(migrate, ["--db", unreachable_url], env={"PARSEC_DEBUG": value})

    assert result.exit_code == 2
    assert f'Error: Invalid value for "--debug": {value} is not a valid boolean' in result.stderr


def test_migrate_runs_as_a_program(empty_postgresql_url: str) -> None:
    command = [
        sys.executable,
        "-c",
        "from parsec_server.cli.backend_migrate import migrate; migrate()",
        "--db",
        empty_postgresql_url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout == FIRST_RUN_OUTPUT

    async def check() -> str | None:
        conn = await asyncpg.connect(empty_postgresql_url)
        try:
            return await check_migrations_applied(conn)
        finally:
            await conn.close()

    assert run_async(check()) is None
