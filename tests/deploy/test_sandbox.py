"""The systemd unit's sandbox does not get in the server's way, checked without systemd
(not running here): a server with `--workers 2` on PostgreSQL, under load then SIGTERM,

* runs with `PR_SET_MDWE` (Linux 6.3+: memory cannot become writable and executable, what
  `MemoryDenyWriteExecute=yes` enforces),
* makes only system calls of `@system-service` (`SystemCallFilter=`), as traced by strace
  and expanded by `systemd-analyze syscall-filter`,
* opens only AF_INET, AF_INET6 and AF_UNIX sockets (`RestrictAddressFamilies=`).

Skipped where strace, systemd-analyze or ptrace are not available.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from parsec_server.api.codec import ID, DateTime
from tests.cli.test_backend_run_lifecycle import (
    PARSEC,
    child_pids,
    free_port,
    org_on,
    server_env,
)
from tests.fixtures.servers import ADMINISTRATION_TOKEN

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
ALLOWED_FAMILIES = {"AF_INET", "AF_INET6", "AF_UNIX"}


def syscall_groups() -> dict[str, list[str]]:
    output = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(group: str, groups: dict[str, list[str]], seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    calls: set[str] = set()
    for member in groups.get(group, []):
        if member.startswith("@"):
            if member not in seen:
                seen.add(member)
                calls |= expand(member, groups, seen)
        else:
            calls.add(member)
    return calls


def _mdwe() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")


def mdwe_supported() -> bool:
    result = subprocess.run(
        [
            "python3",
            "-c",
            "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)",
        ],
        check=False,
    )
    return result.returncode == 0


def strace_works() -> bool:
    if shutil.which("strace") is None or shutil.which("systemd-analyze") is None:
        return False
    result = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "true"], check=False)
    return result.returncode == 0


async def workload(port: int) -> None:
    from parsec_server.api.addr import BackendAddr

    org = await org_on(BackendAddr("127.0.0.1", port, False))
    async with await org.alice.connect() as conn:
        from parsec_server.client.realm import create_realm

        realm_id = await create_realm(conn, org.alice)
        for _ in range(5):
            rep = await conn.cmd(
                "vlob_create",
                realm_id=realm_id,
                encryption_revision=1,
                vlob_id=ID.new(),
                timestamp=DateTime.now(),
                blob=b"x",
            )
            assert rep == {"status": "ok"}
        block_id = ID.new()
        rep = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=b"b")
        assert rep == {"status": "ok"}
        assert (await conn.cmd("block_read", block_id=block_id))["block"] == b"b"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
    writer.close()


def test_server_runs_within_the_units_sandbox(migrated_postgresql_url: str, tmp_path: Path) -> None:
    if not strace_works():
        pytest.skip("strace (with ptrace allowed) and systemd-analyze are needed")
    port = free_port()
    trace = tmp_path / "strace.out"
    env = server_env(
        {
            "PARSEC_DB": migrated_postgresql_url,
            "PARSEC_BLOCKSTORE": "POSTGRESQL",
            "PARSEC_ADMINISTRATION_TOKEN": ADMINISTRATION_TOKEN,
            "PARSEC_BACKEND_ADDR": f"parsec://127.0.0.1:{port}?no_ssl=true",
            "PARSEC_EMAIL_HOST": "MOCKED",
            "PARSEC_PORT": str(port),
            "PARSEC_WORKERS": "2",
            "PARSEC_DB_MIN_CONNECTIONS": "1",
        }
    )
    with_mdwe = mdwe_supported()
    process = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(trace), PARSEC, "backend", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_mdwe if with_mdwe else None,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        asyncio.run(workload(port))
        [parsec_pid] = child_pids(process.pid)  # strace's child: the server's parent process
        os.kill(parsec_pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "Traceback" not in output

    text = trace.read_text()
    used = set(re.findall(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", text, flags=re.MULTILINE))
    used.discard("exited")  # `+++ exited with 0 +++` lines do not match anyway
    allowed = expand("@system-service", syscall_groups())
    assert len(used) > 30
    assert used - allowed == set()
    families = set(re.findall(r"\bsocket(?:pair)?\((AF_[A-Z0-9]+)", text))
    assert families and families <= ALLOWED_FAMILIES
    if not with_mdwe:
        pytest.skip("PR_SET_MDWE is not supported by this kernel: only the syscalls checked")
