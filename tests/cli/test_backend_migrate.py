from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from click.testing import CliRunner

from parsec_server.backend.storage.postgresql.migrations import (
    check_migrations_applied,
    read_schema_levels,
)
from parsec_server.cli.backend_migrate import migrate
from tests.backend.schema_helpers import build_reference, catalog, connect, data_snapshot
from tests.fixtures.postgresql import run_async

FILE_NAMES = [
    "0001_initial.sql",
    "0002_add_migration_table.sql",
    "0003_human_handle.sql",
    "0004_invite.sql",
    "0005_redacted_certificates.sql",
]
EXTRAS = "extras/0001_server_extras.sql"
FIRST_RUN_OUTPUT = "Migrate ✔\n" + "".join(f"{name} ✔\n" for name in [*FILE_NAMES, EXTRAS])
SECOND_RUN_OUTPUT = "Migrate ✔\n" + "".join(
    f"{name} (already applied)\n" for name in [*FILE_NAMES, EXTRAS]
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
        + f"{EXTRAS} ✔\n"
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


def test_migrate_refuses_a_non_postgresql_url(runner: CliRunner) -> None:
    for url in ("MOCKED", "mysql://localhost/parsec", "sqlite:///tmp/db"):
        result = runner.invoke(migrate, ["--db", url])

        assert result.exit_code == 2, result.output
        assert (
            'Error: Invalid value for "--db": Must start with `postgresql://` or `postgres://`'
            in result.stderr
        )
        assert "Migrate" not in result.stdout


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
