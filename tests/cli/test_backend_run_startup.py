"""`parsec backend run` refuses to start, with one line and before listening, when its
database cannot be used."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.fixtures import free_port

PARSEC = str(Path(sys.executable).parent / "parsec")


def _run(
    db_url: str, port: int, blockstore: str = "POSTGRESQL"
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
