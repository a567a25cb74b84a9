"""`parsec backend run` refuses to start, with one line and before listening, when its
database cannot be used."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.fixtures import free_port

PARSEC = str(Path(sys.executable).parent / "parsec")


def _run(
    db_url: str, port: int, blockstore: str = "POSTGRESQL", *options: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            PARSEC,
            "backend",
            "run",
            "--db",
            db_url,
            "--blockstore",
            blockstore,
            "--administration-token",
            "t",
            "--backend-addr",
            f"parsec://127.0.0.1:{port}?no_ssl=true",
            "--email-host",
            "MOCKED",
            "--port",
            str(port),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


def test_unreachable_database_is_a_one_line_error() -> None:
    dead_port = free_port()
    result = _run(f"postgresql://postgres@127.0.0.1:{dead_port}/parsec", free_port())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result)
    assert line.startswith("Error: Cannot connect to the database")


def test_unmigrated_database_is_refused_with_a_hint_to_migrate(
    empty_postgresql_url: str,
) -> None:
    port = free_port()
    result = _run(empty_postgresql_url, port)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result)
    assert "parsec backend migrate" in line
    # Nothing ever listened.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("MOCKED", port, blockstore="MOCKED")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result)
    assert line.startswith(f"Error: Cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in line.lower()


def test_missing_block_directory_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "blocks"
    result = _run("MOCKED", free_port(), blockstore=f"file:{missing}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result)
    assert line == (
        f"Error: Block directory `{missing}` does not exist "
        "(create it, on the disk meant for the blocks)"
    )


# --- SQLite --------------------------------------------------------------------------------


def _refusal(db_url: str, *options: str) -> str:
    """The one error line of `run` on `db_url`, checked to come before listening."""
    port = free_port()
    result = _run(db_url, port, "MOCKED", *options)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    [line] = _error_lines(result)
    return line


def test_missing_sqlite_file_is_refused_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "parsec.sqlite"

    assert _refusal(f"sqlite:{path}") == (
        f"Error: SQLite database {path} does not exist: create it with "
        f"`parsec backend migrate --db sqlite:{path}`"
    )
    assert not path.parent.exists()  # `run` creates nothing


def test_unmigrated_sqlite_file_is_refused_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "parsec.sqlite"
    sqlite3.connect(path).close()  # an empty database

    assert _refusal(f"sqlite:{path}") == (
        f"Error: SQLite database {path} is not up to date: migration 0001_initial.sql is "
        f"not applied; run `parsec backend migrate --db sqlite:{path}`"
    )


def test_sqlite_file_of_a_newer_server_is_refused(migrated_sqlite_path: Path) -> None:
    with sqlite3.connect(migrated_sqlite_path) as conn:
        conn.execute("INSERT INTO migration (_id, name, applied) VALUES (2, 'future', 0)")
    conn.close()

    assert _refusal(f"sqlite:{migrated_sqlite_path}") == (
        f"Error: SQLite database {migrated_sqlite_path} was migrated by a newer version of "
        "the server (last applied migration: 0002, latest known: 0001)"
    )


def test_a_file_that_is_not_a_database_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "parsec.sqlite"
    path.write_bytes(b"not a database" * 1000)

    line = _refusal(f"sqlite:{path}")
    assert line.startswith(f"Error: Cannot open SQLite database {path}: ")


def test_several_workers_on_sqlite_are_refused(migrated_sqlite_url: str) -> None:
    assert _refusal(migrated_sqlite_url, "--workers", "2") == (
        "Error: --workers above 1 is not possible with SQLite (one process owns the "
        "database file and its events): use --workers 1, or PostgreSQL"
    )
