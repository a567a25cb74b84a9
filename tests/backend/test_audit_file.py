"""The audit file (backend/audit.py, docs/audit-log.md): append-only across restarts,
whole lines when several processes write, rotation without a signal, write failures
reported without failing the action."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from parsec_server.backend.audit import (
    Action,
    Actor,
    AuditFile,
    AuditLog,
    Target,
    open_audit_log,
)
from parsec_server.backend.config import StartupError


def record(audit: AuditLog, organization: str = "Org") -> None:
    audit.record(
        Action.ORGANIZATION_CREATE,
        Actor.administration_token("192.0.2.1"),
        Target(organization=organization),
        "ok",
    )


def organizations(path: Path) -> list[str]:
    return [json.loads(line)["target"]["organization"] for line in path.read_text().splitlines()]


def test_lines_are_appended_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with open_audit_log(path) as audit:
        record(audit, "First")
    with open_audit_log(path) as audit:
        record(audit, "Second")
    assert organizations(path) == ["First", "Second"]


def test_the_file_is_created_private_to_its_group(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with open_audit_log(path):
        pass
    assert path.stat().st_mode & 0o777 & ~0o640 == 0


def test_a_renamed_file_is_replaced_by_a_new_one(tmp_path: Path) -> None:
    """logrotate's default (`create`): the file is renamed, the next line opens a new one."""
    path = tmp_path / "audit.log"
    with open_audit_log(path) as audit:
        record(audit, "Before")
        path.rename(tmp_path / "audit.log.1")
        record(audit, "After")
        path.unlink()
        record(audit, "Deleted")
    assert organizations(tmp_path / "audit.log.1") == ["Before"]
    assert organizations(path) == ["Deleted"]


def test_a_truncated_file_is_written_from_its_start(tmp_path: Path) -> None:
    """logrotate's `copytruncate`: O_APPEND writes at the new end, no hole of NUL bytes."""
    path = tmp_path / "audit.log"
    with open_audit_log(path) as audit:
        record(audit, "Before")
        os.truncate(path, 0)
        record(audit, "After")
    assert organizations(path) == ["After"]
    assert b"\0" not in path.read_bytes()


def test_a_file_that_cannot_be_opened_is_a_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "missing-folder" / "audit.log"
    with (
        pytest.raises(StartupError, match=r"Cannot open audit log file .*No such file"),
        open_audit_log(path),
    ):
        pass


def test_a_failed_write_is_logged_and_the_action_goes_on(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    file = AuditFile(Path("/dev/full"))
    try:
        with structlog.testing.capture_logs() as logs:
            record(AuditLog(file))
    finally:
        file.close()
    assert [log["event"] for log in logs] == ["Audit", "Cannot write to the audit log"]
    assert logs[1]["log_level"] == "error"
    assert logs[1]["action"] == "organization.create"


WRITER = """
import sys
from pathlib import Path
from parsec_server.backend.audit import Action, Actor, AuditFile, Target, audit_line
import json

path, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
file = AuditFile(path)
for n in range(count):
    line = audit_line(
        Action.HANDSHAKE_REFUSED, Actor.peer("198.51.100.7"), Target(organization=name * 60),
        "refused", "unknown_device", {"n": n},
    )
    file.write((json.dumps(line) + "\\n").encode())
file.close()
"""


def test_lines_of_several_processes_stay_whole(tmp_path: Path) -> None:
    """What `--workers N` does: N processes append to one file at once."""
    path = tmp_path / "audit.log"
    count = 2000
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(count)])
        for name in ("A", "B", "C")
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # all whole
    for name in ("A", "B", "C"):
        numbers = [
            line["details"]["n"] for line in lines if line["target"]["organization"][0] == name
        ]
        assert numbers == list(range(count))
