"""`parsec backend downgrade`, and `migrate` / `downgrade` killed in the middle of a long
step (SIGKILL): the database is as it was, and running them again completes them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from parsec_server.backend.storage.postgresql.migrations import migrate as migrate_database
from parsec_server.backend.storage.postgresql.schema.activity import TOOL_APPLICATION_NAME
from parsec_server.cli.backend_downgrade import downgrade
from parsec_server.cli.main import cli
from tests.backend.schema_helpers import (
    ALREADY_APPLIED,
    EXTRAS_REMOVED,
    build_reference,
    catalog,
    connect,
    data_snapshot,
    fill_reference,
    run_reference_migrate,
)
from tests.fixtures.postgresql import run_async

PARSEC = str(Path(sys.executable).parent / "parsec")
STEP_TIMEOUT = 60.0

EXTRAS_REMOVED_OUTPUT = "".join(f"{line}\n" for line in EXTRAS_REMOVED)
HANDED_BACK = (
    "Downgrade ✔\n"
    + EXTRAS_REMOVED_OUTPUT
    + "Database handed back: Parsec 2.0.0 schema, 0005_redacted_certificates\n"
)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("PARSEC_DB", "PARSEC_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


async def _migrated(url: str) -> None:
    async with connect(url) as conn:
        await build_reference(conn, 5)
        await fill_reference(conn)
        await migrate_database(conn)


def test_downgrade_is_a_backend_command(runner: CliRunner, empty_postgresql_url: str) -> None:
    run_async(_migrated(empty_postgresql_url))

    dry = runner.invoke(cli, ["backend", "downgrade", "--db", empty_postgresql_url, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith(f"Downgrade ✔\n{EXTRAS_REMOVED_OUTPUT}  DROP ")
    assert dry.stdout.endswith(
        "Database would be handed back: Parsec 2.0.0 schema, 0005_redacted_certificates\n"
        "Dry run: nothing was changed\n"
    )

    result = runner.invoke(downgrade, [], env={"PARSEC_DB": empty_postgresql_url})
    assert result.exit_code == 0, result.output
    assert result.stdout == HANDED_BACK

    again = runner.invoke(downgrade, ["--db", empty_postgresql_url])
    assert again.exit_code == 0, again.output
    assert again.stdout == (
        "Downgrade ✔\nnothing to do: the database is in the Parsec 2.0.0 layout at level 5\n"
    )
    assert run_reference_migrate(empty_postgresql_url, "--dry-run") == ALREADY_APPLIED


def test_downgrade_refuses_in_one_line(runner: CliRunner, empty_postgresql_url: str) -> None:
    result = runner.invoke(downgrade, ["--db", empty_postgresql_url])

    assert result.exit_code == 1
    assert result.stdout == (
        "Downgrade ✘\n"
        "Error: Database has no Parsec schema: nothing to hand back; nothing was changed\n"
    )


# --- Killed midway ----------------------------------------------------------------------


async def _run_until_blocked(url: str, command: str, statement: str) -> tuple[list[str], list[str]]:
    """Run `command` (--force) while a writer holds a lock that `statement` waits for;
    kill it (SIGKILL) once it reports that step running. Returns the stderr lines seen
    and the stdout."""
    async with connect(url, "blocking writer") as blocker:
        await blocker.execute("BEGIN; LOCK TABLE vlob_atom IN ROW EXCLUSIVE MODE")
        process = await asyncio.create_subprocess_exec(
            PARSEC,
            "backend",
            command,
            "--db",
            url,
            "--force",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None and process.stdout is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                while not any(statement in line and "running for" in line for line in seen):
                    line = await process.stderr.readline()
                    assert line, f"{command} ended before blocking: {seen}"
                    seen.append(line.decode())
        finally:
            process.kill()
            await process.wait()
        stdout = (await process.stdout.read()).decode().splitlines()
        await blocker.execute("COMMIT")
    # The killed client's session ends (rolled back) once it gets the lock
    async with connect(url) as conn:
        for _ in range(int(STEP_TIMEOUT * 10)):
            sessions = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                TOOL_APPLICATION_NAME,
            )
            if not sessions:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the killed client's session is still there")
    return seen, stdout


async def _state(url: str) -> tuple[list[str], dict[str, list[str]]]:
    async with connect(url) as conn:
        return await catalog(conn), await data_snapshot(conn)


async def test_migrate_killed_midway_leaves_the_database_as_it_was(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, 5)
        await fill_reference(conn)
    before = await _state(empty_postgresql_url)

    progress, stdout = await _run_until_blocked(
        empty_postgresql_url, "migrate", "CREATE INDEX ext_vlob_atom_vlob_idx"
    )

    assert progress[-1].startswith(
        "extras/0001_server_extras.sql: CREATE INDEX ext_vlob_atom_vlob_idx ON vlob_atom "
        "(organization, vlob_id, version) (running for 2s"
    )
    assert stdout == []
    assert await _state(empty_postgresql_url) == before

    completed = await asyncio.create_subprocess_exec(
        PARSEC, "backend", "migrate", "--db", empty_postgresql_url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await completed.communicate()
    assert completed.returncode == 0
    assert "extras/0001_server_extras.sql ✔" in out.decode().splitlines()


async def test_downgrade_killed_midway_leaves_the_database_as_it_was(
    empty_postgresql_url: str,
) -> None:
    await _migrated(empty_postgresql_url)
    before = await _state(empty_postgresql_url)

    progress, _ = await _run_until_blocked(empty_postgresql_url, "downgrade", "DROP INDEX")

    assert progress[-1].startswith("extras: DROP INDEX ext_block_realm_idx, ")
    assert await _state(empty_postgresql_url) == before

    completed = await asyncio.create_subprocess_exec(
        PARSEC, "backend", "downgrade", "--db", empty_postgresql_url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await completed.communicate()
    assert completed.returncode == 0
    assert out.decode() == HANDED_BACK
