"""The administration API fuzzed from its own OpenAPI document with Schemathesis (every
check: no 500, answers within the document, valid data accepted, invalid data refused,
wrong methods 405, the token needed), against `parsec backend run --dev` on each storage."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import free_port
from tests.interop.conftest import ServerProcess, accepts_tcp, clean_environment, our_parsec

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t"  # what --dev sets
MAX_EXAMPLES = 25
TIMEOUT = 500.0


@pytest.fixture(params=["memory", "postgresql"])
def server_port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    command: list[str | Path] = [our_parsec(), "backend", "run", "--dev", "-P", str(port)]
    if request.param == "postgresql":
        command += ["--db", request.getfixturevalue("migrated_postgresql_url")]
    process = ServerProcess(
        command, clean_environment(TMPDIR=str(tmp_path)), tmp_path, accepts_tcp(port), tmp_path
    )
    process.start()
    try:
        yield port
    finally:
        process.stop()
        if "Traceback" in process.output:
            pytest.fail(f"The server logged an error:\n{process.output}")


def test_the_api_holds_to_its_openapi_document(server_port: int, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    started = time.monotonic()
    result = subprocess.run(
        [
            st,
            "--config-file",
            REPO_ROOT / "schemathesis.toml",
            "run",
            f"http://127.0.0.1:{server_port}/administration/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--workers",
            "1",
            "--seed",
            "20261204",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert " passed" in result.stdout, result.stdout
    assert time.monotonic() - started < TIMEOUT
