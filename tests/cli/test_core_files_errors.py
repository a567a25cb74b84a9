"""The failures of the workspace and file commands (`parsec core ls|upload|download|...`):
wrong password, revoked device, no access to the workspace, server unreachable, remote
path missing, local disk full, local read error. Each: exit code 1, one `Error: ...` line
on stderr, no traceback, and nothing half-written on the server nor locally.

The server runs in a subprocess (memory storage); the commands run in this process
through click's `CliRunner`, with devices saved in a configuration folder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import DateTime
from parsec_server.api.ids import UserProfile
from parsec_server.cli.core_files import download, ls, upload
from parsec_server.cli.core_workspace import create_workspace, list_workspaces, share_workspace
from parsec_server.client.certificates import revoked_user_certificate
from parsec_server.client.device import LocalDevice
from parsec_server.client.device_file import save_device_with_password
from parsec_server.client.user import create_user
from tests.cli.test_core_admin import (
    Server,
    assert_one_line_error,
    bootstrap,
    bootstrap_url,
    create,
    server_process,
    unused_port,
)

PASSWORD = "P@ssw0rd-errors"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with server_process(tmp_path_factory.mktemp("server"), tls=None) as running:
        yield running


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEBUG", raising=False)


@dataclasses.dataclass
class People:
    alice: LocalDevice
    alice_dir: Path
    bob: LocalDevice
    bob_dir: Path


_numbers = iter(range(1, 10_000))


@pytest.fixture
def people(server: Server, tmp_path: Path) -> People:
    """Alice (admin) and Bob (standard), each a device saved in its own folder."""
    alice = bootstrap(bootstrap_url(create(server, f"ErrOrg{next(_numbers)}")))
    bob = _new_user(alice, "bob")
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    save_device_with_password(alice_dir, alice, PASSWORD)
    save_device_with_password(bob_dir, bob, PASSWORD)
    return People(alice, alice_dir, bob, bob_dir)


def _new_user(admin: LocalDevice, user_id: str) -> LocalDevice:
    async def main() -> LocalDevice:
        async with await admin.connect() as conn:
            return await create_user(conn, admin, user_id, "dev1", None, UserProfile.STANDARD)

    return asyncio.run(main())


def run(command: click.Command, config_dir: Path, *args: str | Path) -> Result:
    arguments = [str(a) for a in args]
    return CliRunner().invoke(
        command, [*arguments, "--config-dir", str(config_dir), "--password", PASSWORD]
    )


def ok(command: click.Command, config_dir: Path, *args: str | Path) -> str:
    result = run(command, config_dir, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def names(config_dir: Path, remote: str) -> list[str]:
    return [e["name"] for e in json.loads(ok(ls, config_dir, remote, "--json"))]


def test_wrong_password(people: People) -> None:
    result = CliRunner().invoke(
        list_workspaces, ["--config-dir", str(people.alice_dir), "--password", "nope"]
    )
    message = assert_one_line_error(result)
    assert message.startswith("Cannot load device") and "password" in message.lower()


def test_wrong_password_from_stdin(people: People) -> None:
    result = CliRunner().invoke(
        list_workspaces,
        ["--config-dir", str(people.alice_dir), "--password-stdin"],
        input="nope\n",
    )
    assert_one_line_error(result)


def test_revoked_device(people: People) -> None:
    async def revoke() -> None:
        alice = people.alice
        certificate = revoked_user_certificate(
            alice.signing_key, alice.device_id, DateTime.now(), people.bob.user_id
        )
        async with await alice.connect() as conn:
            reply = await conn.cmd("user_revoke", revoked_user_certificate=certificate)
            assert reply["status"] == "ok", reply

    asyncio.run(revoke())
    message = assert_one_line_error(run(list_workspaces, people.bob_dir))
    assert "revoked" in message


def test_no_access_to_the_workspace(people: People, tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    local.write_bytes(b"content")
    ok(create_workspace, people.alice_dir, "Private")
    ok(upload, people.alice_dir, local, "/Private/f.txt")
    # Not shared: Bob does not even see it.
    message = assert_one_line_error(run(ls, people.bob_dir, "/Private"))
    assert message == "No workspace `Private`"
    # Shared as reader: Bob reads, cannot write; nothing is written.
    ok(share_workspace, people.alice_dir, "Private", people.bob.user_id, "READER")
    assert names(people.bob_dir, "/Private") == ["f.txt"]
    message = assert_one_line_error(run(upload, people.bob_dir, local, "/Private/g.txt"))
    assert message == "Not allowed to write in workspace `Private`"
    assert names(people.alice_dir, "/Private") == ["f.txt"]
    # Role taken away: the workspace is gone for Bob.
    ok(share_workspace, people.alice_dir, "Private", people.bob.user_id, "NONE")
    message = assert_one_line_error(run(download, people.bob_dir, "/Private/f.txt", tmp_path))
    assert message == "No workspace `Private`"


def test_server_unreachable(people: People, tmp_path: Path) -> None:
    nowhere = BackendAddr.from_url(f"parsec://127.0.0.1:{unused_port()}?no_ssl=true")
    lost = dataclasses.replace(people.alice, backend_addr=nowhere)
    config_dir = tmp_path / "lost"
    save_device_with_password(config_dir, lost, PASSWORD)
    message = assert_one_line_error(run(ls, config_dir, "/Anything"))
    assert message.startswith("Cannot reach the server")


def test_remote_path_missing(people: People, tmp_path: Path) -> None:
    ok(create_workspace, people.alice_dir, "W")
    target = tmp_path / "out.txt"
    message = assert_one_line_error(run(download, people.alice_dir, "/W/nope.txt", target))
    assert message == "/nope.txt not found"
    assert not target.exists()
    message = assert_one_line_error(run(ls, people.alice_dir, "/W/a/b"))
    assert message == "/a not found"
    message = assert_one_line_error(run(upload, people.alice_dir, tmp_path, "/W/x/y/z"))
    assert message == "/x not found"
    assert names(people.alice_dir, "/W") == []


class _FailingStream(io.RawIOBase):
    """A stream whose reads (writes) fail with `error` after `budget` bytes."""

    def __init__(self, error: int, budget: int) -> None:
        self.error = error
        self.budget = budget

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def _spend(self, size: int) -> int:
        if self.budget <= 0:
            raise OSError(self.error, os.strerror(self.error))
        spent = min(size, self.budget)
        self.budget -= spent
        return spent

    def readinto(self, buffer: Any) -> int:
        size = self._spend(len(buffer))
        buffer[:size] = b"x" * size
        return size

    def write(self, data: Any) -> int:
        return self._spend(len(data))


@pytest.fixture
def failing_files(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    """Names whose opening gives a `_FailingStream` (errno, budget in bytes)."""
    failing: dict[str, tuple[int, int]] = {}
    original = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if self.name in failing:
            return _FailingStream(*failing[self.name])
        return original(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    return failing


def test_local_disk_full_leaves_no_partial_file(
    people: People, tmp_path: Path, failing_files: dict[str, tuple[int, int]]
) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(b"y" * (3 * 512 * 1024))
    ok(create_workspace, people.alice_dir, "Disk")
    ok(upload, people.alice_dir, local, "/Disk/big.bin")
    target = tmp_path / "out" / "big.bin"
    target.parent.mkdir()
    failing_files["big.bin.parsec-part"] = (errno.ENOSPC, 600 * 1024)
    message = assert_one_line_error(run(download, people.alice_dir, "/Disk/big.bin", target))
    assert "No space left on device" in message
    assert list(target.parent.iterdir()) == []


def test_local_read_error_writes_nothing_on_the_server(
    people: People, tmp_path: Path, failing_files: dict[str, tuple[int, int]]
) -> None:
    ok(create_workspace, people.alice_dir, "Up")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a")
    (tree / "sub" / "broken.bin").write_bytes(b"x" * (2 * 512 * 1024))  # as the stream reads
    failing_files["broken.bin"] = (errno.EIO, 700 * 1024)
    message = assert_one_line_error(run(upload, people.alice_dir, tree, "/Up/tree"))
    assert message == f"{tree / 'sub' / 'broken.bin'}: Input/output error"
    # Neither the tree nor any part of it is named in the workspace.
    assert names(people.alice_dir, "/Up") == []
    # Run again: a.txt and the first block of broken.bin, stored before the failure, are
    # not sent again.
    del failing_files["broken.bin"]
    done = json.loads(ok(upload, people.alice_dir, tree, "/Up/tree", "--json"))
    assert done["skipped_blocks"] == 2
    assert names(people.alice_dir, "/Up/tree") == ["a.txt", "sub"]
    assert not list((people.alice_dir / "uploads").rglob("*.journal"))
