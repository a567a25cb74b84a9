"""Sharing and re-encryption between our workspace commands and the unmodified 2.0.0
client, on our server (`--dev`): Alice uses ours (organization bootstrapped with our CLI),
Bob the reference client (joined by an invitation Alice's device greets).

- ours shares a workspace with Bob: the reference reads it; ours takes the role away:
  the reference no longer reads it;
- the reference shares one of Bob's with Alice: ours lists and downloads it; the reference
  takes the role away: ours no longer lists it;
- the reference re-encrypts (Alice's own workspace, and Bob's shared with Alice): ours still
  reads both; ours re-encrypts: the reference reads it at the new revision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import (
    PASSWORD,
    Cli,
    DevServer,
    bootstrap_organization,
    create_organization,
    describe,
    new_organization_name,
)
from tests.interop.test_guide_workspaces import (
    REFERENCE_COMMANDS,
    REFERENCE_MAIN,
    Member,
    add_member,
)

pytestmark = pytest.mark.interop

DEV_TOKEN = "s3cr3t"

# Reference commands added to the guide's: a role taken away, and a read that reports the
# failure instead of failing. Every command runs from an empty data folder: the client
# first learns what is on the server (messages, then its user manifest).
EXTRA_COMMANDS = """
from contextlib import asynccontextmanager

_core_from_empty_data = core_of


@asynccontextmanager
async def core_of(args):
    async with _core_from_empty_data(args) as core:
        await core.user_fs.process_last_messages()
        await core.user_fs.sync()
        yield core


async def unshare(args):
    async with core_of(args) as core:
        workspace_id = EntryID(args["workspace_id"])
        await core.user_fs.workspace_share(workspace_id, UserID(args["user_id"]), None)
        roles = await core.user_fs.get_workspace(workspace_id).get_user_roles()
    result({str(user): role.value for user, role in roles.items()})


async def try_read(args):
    try:
        async with core_of(args) as core:
            workspace = await workspace_of(core, args)
            files = await tree(workspace)
        outcome = {"files": files}
    except BaseException as exc:
        outcome = {"error": type(exc).__name__}
    result(outcome)


COMMANDS.update(unshare=unshare, try_read=try_read)
"""
SCRIPT = REFERENCE_COMMANDS + EXTRA_COMMANDS + REFERENCE_MAIN


def _sha(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class Pair:
    """Alice (ours) and Bob (the reference client) in one organization."""

    our_cli: Cli
    reference_cli: Cli
    organization: str
    folder: Path
    alice: Member
    bob: Member
    fresh: int = 0

    def ours(self, *args: str | Path, ok: bool = True) -> str:
        result = self.our_cli.run(
            "core", *args, "--config-dir", self.alice.config_dir, "--password", PASSWORD
        )
        assert (result.returncode == 0) == ok, describe(result)
        return result.stdout if ok else result.stderr

    def ours_json(self, *args: str | Path) -> Any:
        return json.loads(self.ours(*args, "--json"))

    def reference(self, command: str, member: Member, **args: Any) -> Any:
        """A reference command as `member`, from an empty data folder each time."""
        self.fresh += 1
        arguments = {
            "config_dir": str(member.config_dir),
            "data_dir": str(self.folder / f"{member.name}-data-{self.fresh}"),
            "organization": self.organization,
            "password": PASSWORD,
            **args,
        }
        result = self.reference_cli.python(SCRIPT, command, json.dumps(arguments), timeout=120)
        assert result.returncode == 0, describe(result)
        [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        return json.loads(line.removeprefix("RESULT "))

    def our_workspaces(self) -> dict[str, dict[str, Any]]:
        return {w["id"]: w for w in self.ours_json("list_workspaces")}


@pytest.fixture
def pair(dev_server: DevServer, our_cli: Cli, reference_cli: Cli, tmp_path: Path) -> Pair:
    name = new_organization_name()
    url = create_organization(our_cli, dev_server.addr, DEV_TOKEN, name)
    config_dir = tmp_path / "alice-config"
    result = bootstrap_organization(our_cli, url, config_dir, "Alice", "alice@example.com", "pc")
    assert result.returncode == 0, describe(result)
    [me] = [u for u in _list_users(our_cli, config_dir) if u["email"] == "alice@example.com"]
    alice = Member("alice", config_dir, f"{me['user_id']}@unused", tmp_path / "alice-data")
    bob = add_member(reference_cli, name, tmp_path, alice, "bob", "user", "Bob", "bob@example.com")
    return Pair(our_cli, reference_cli, name, tmp_path, alice, bob)


def _list_users(cli: Cli, config_dir: Path) -> list[dict[str, Any]]:
    result = cli.run(
        "core", "list_users", "--json", "--config-dir", config_dir, "--password", PASSWORD
    )
    assert result.returncode == 0, describe(result)
    users: list[dict[str, Any]] = json.loads(result.stdout)
    return users


def test_sharing_both_ways_and_removing_the_role(pair: Pair) -> None:
    local = pair.folder / "report.txt"
    local.write_bytes(b"from ours\n")
    docs = pair.ours_json("create_workspace", "Docs")["id"]
    pair.ours("upload", local, "/Docs/report.txt", "--quiet")

    # Ours shares with Bob (by email): the reference reads it, and writes in it.
    pair.ours("share_workspace", "Docs", "bob@example.com", "CONTRIBUTOR")
    seen = pair.reference("read", pair.bob, workspace_id=docs)
    assert seen["name"] == "Docs"
    assert seen["roles"] == {pair.alice.user_id: "OWNER", pair.bob.user_id: "CONTRIBUTOR"}
    assert seen["files"] == {"/report.txt": _sha(b"from ours\n")}
    pair.reference("write", pair.bob, workspace_id=docs, path="/bob.txt", contents=["hi"])
    pair.ours("download", "/Docs/bob.txt", pair.folder / "bob.txt", "--quiet")
    assert (pair.folder / "bob.txt").read_bytes() == b"hi"

    # The reference shares one of Bob's with Alice: ours lists and reads it.
    source = pair.folder / "plan.txt"
    source.write_bytes(b"from the reference\n")
    created = pair.reference(
        "create_workspace", pair.bob, name="Plans", files={"plan.txt": str(source)}
    )
    plans = created["workspace_id"].replace("-", "")
    roles = pair.reference(
        "share", pair.bob, workspace_id=plans, user_ids=[pair.alice.user_id], role="READER"
    )
    assert roles[pair.alice.user_id] == "READER"
    listed = pair.our_workspaces()
    assert listed[plans]["name"] == "Plans"
    assert listed[plans]["role"] == "READER"
    pair.ours("download", "/Plans/plan.txt", pair.folder / "got.txt", "--quiet")
    assert (pair.folder / "got.txt").read_bytes() == b"from the reference\n"
    # A reader cannot write: one line, nothing written.
    error = pair.ours("upload", local, "/Plans/mine.txt", "--quiet", ok=False)
    assert error.count("\n") == 1 and error.startswith("Error: "), error
    assert [e["name"] for e in pair.ours_json("ls", "/Plans")] == ["plan.txt"]

    # Ours takes Bob's role away: the reference no longer reads the workspace.
    pair.ours("share_workspace", "Docs", pair.bob.user_id, "NONE")
    assert "error" in pair.reference("try_read", pair.bob, workspace_id=docs)
    # The reference takes Alice's away: ours no longer lists it, nor reads it.
    roles = pair.reference("unshare", pair.bob, workspace_id=plans, user_id=pair.alice.user_id)
    assert pair.alice.user_id not in roles
    assert plans not in pair.our_workspaces()
    error = pair.ours("ls", "/Plans", ok=False)
    assert error == "Error: No workspace `Plans`\n"


def test_reencrypted_by_either_stays_readable_by_both(pair: Pair) -> None:
    local = pair.folder / "secret.txt"
    local.write_bytes(b"top secret\n")
    docs = pair.ours_json("create_workspace", "Docs")["id"]
    pair.ours("upload", local, "/Docs/secret.txt", "--quiet")
    pair.ours("share_workspace", "Docs", pair.bob.user_id, "READER")

    # The reference re-encrypts Alice's workspace (as Alice): ours still reads it.
    done = pair.reference("reencrypt", pair.alice, workspace_id=docs, batch_size=2)
    assert done["encryption_revision"] == 2
    assert done["in_maintenance"] is False
    pair.ours("download", "/Docs/secret.txt", pair.folder / "a.txt", "--quiet")
    assert (pair.folder / "a.txt").read_bytes() == b"top secret\n"
    assert pair.our_workspaces()[docs]["encryption_revision"] == 2

    # Bob's workspace, shared with Alice, re-encrypted by Bob: ours learns the new key
    # from the `sharing.reencrypted` message alone.
    source = pair.folder / "plan.txt"
    source.write_bytes(b"plan\n")
    created = pair.reference(
        "create_workspace", pair.bob, name="Plans", files={"plan.txt": str(source)}
    )
    plans = created["workspace_id"].replace("-", "")
    pair.reference(
        "share", pair.bob, workspace_id=plans, user_ids=[pair.alice.user_id], role="MANAGER"
    )
    assert pair.our_workspaces()[plans]["encryption_revision"] == 1
    pair.reference("reencrypt", pair.bob, workspace_id=plans, batch_size=10)
    pair.ours("download", "/Plans/plan.txt", pair.folder / "p.txt", "--quiet")
    assert (pair.folder / "p.txt").read_bytes() == b"plan\n"
    assert pair.our_workspaces()[plans]["encryption_revision"] == 2

    # Ours re-encrypts Docs: the reference (Bob, a reader) reads it at revision 3.
    out = pair.ours_json("reencrypt_workspace", "Docs")
    assert out["encryption_revision"] == 3
    assert out["versions"] >= 2  # the workspace manifest's versions and the file's
    seen = pair.reference("read", pair.bob, workspace_id=docs)
    assert seen["encryption_revision"] == 3
    assert seen["files"] == {"/secret.txt": _sha(b"top secret\n")}
    # And ours writes and reads with the new key.
    pair.ours("upload", local, "/Docs/again.txt", "--quiet")
    assert [e["name"] for e in pair.ours_json("ls", "/Docs")] == ["again.txt", "secret.txt"]
    # Bob (a reader) cannot re-encrypt: owners only.
    error = pair.ours("reencrypt_workspace", "Plans", ok=False)
    assert error.startswith("Error: Only an owner"), error
