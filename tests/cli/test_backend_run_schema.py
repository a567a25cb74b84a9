"""`parsec backend run` refuses, before listening, a database whose layout is not the one
it runs on, with one line naming the fix."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from parsec_server.backend.storage.postgresql.migrations import Series, migrate
from tests.backend.schema_helpers import (
    EXTRAS_FILE_NAMES,
    build_ours,
    build_reference,
    connect,
)
from tests.fixtures import free_port
from tests.fixtures.postgresql import run_async

PARSEC = str(Path(sys.executable).parent / "parsec")
EXTRAS_LEVELS = len(EXTRAS_FILE_NAMES)


def run_server(db_url: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            PARSEC,
            "backend",
            "run",
            "--db",
            db_url,
            "--blockstore",
            "POSTGRESQL",
            "--administration-token",
            "t",
            "--backend-addr",
            f"parsec://127.0.0.1:{port}?no_ssl=true",
            "--email-host",
            "MOCKED",
            "--port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def legacy(url: str) -> None:
    async with connect(url) as conn:
        await build_ours(conn, Series.LEGACY, 5)


async def reference_3(url: str) -> None:
    async with connect(url) as conn:
        await build_reference(conn, 3)


async def reference_5(url: str) -> None:
    async with connect(url) as conn:
        await build_reference(conn, 5)


async def newer(url: str) -> None:
    async with connect(url) as conn:
        await migrate(conn)
        await conn.execute("INSERT INTO migration VALUES (6, 'xyz', now())")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            legacy,
            "Error: Database is in the previous parsec-server layout: run `parsec backend "
            "migrate` (conversion needed)",
        ),
        (
            reference_3,
            "Error: Database is not up to date (Parsec 2.0.0 layout at level 3 of 5, server "
            f"extras at level 0 of {EXTRAS_LEVELS}): run `parsec backend migrate`",
        ),
        (
            reference_5,
            "Error: Database is not up to date (Parsec 2.0.0 layout at level 5 of 5, server "
            f"extras at level 0 of {EXTRAS_LEVELS}): run `parsec backend migrate`",
        ),
        (
            newer,
            "Error: Database was migrated by a newer or unknown version (migration "
            "0006_xyz): use the version of Parsec that migrated it",
        ),
    ],
    ids=["legacy", "reference-3", "reference-5-without-extras", "newer"],
)
def test_run_refuses_a_database_it_cannot_use_before_listening(
    empty_postgresql_url: str, setup: Callable[[str], Awaitable[None]], message: str
) -> None:
    run_async(setup(empty_postgresql_url))
    port = free_port()

    result = run_server(empty_postgresql_url, port)

    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if "Error" in line] == [message]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
