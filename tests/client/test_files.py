"""Workspaces and files (client/workspaces.py, client/files.py) against our server on the
memory storage: create, share, tree upload and download byte for byte, versions, moves,
removals, conflicts."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.client.blocks import new_block_access
from parsec_server.client.device import LocalDevice
from parsec_server.client.files import Workspace, conflict_name
from parsec_server.client.fs_errors import FSNoAccessError, FSNotFoundError
from parsec_server.client.manifests import BlockAccess, FileManifest
from parsec_server.client.pool import ConnectionPool
from parsec_server.client.reencryption import reencrypt_workspace
from parsec_server.client.upload_journal import UploadJournal
from parsec_server.client.workspaces import Session
from tests.fixtures.servers import Organization

BLOCKSIZE = 64 * 1024


@pytest.fixture
def db_url() -> str:
    return "MOCKED"


@asynccontextmanager
async def session_of(device: LocalDevice) -> AsyncIterator[Session]:
    async with await device.connect() as conn:
        yield Session(conn, device)


@asynccontextmanager
async def workspace_of(session: Session, name: str) -> AsyncIterator[Workspace]:
    entry = await session.workspace_entry(name)
    async with ConnectionPool(session.device, 3, first=session.conn) as pool:
        yield Workspace(session, entry, pool, parallel=3, blocksize=BLOCKSIZE)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"hello\n",
        "empty": b"",
        "sub/big.bin": os.urandom(3 * BLOCKSIZE + 123),
        "sub/deeper/exact.bin": os.urandom(2 * BLOCKSIZE),
    }
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "empty-dir").mkdir()
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


async def test_tree_uploaded_downloads_byte_for_byte(org: Organization, tmp_path: Path) -> None:
    source = tmp_path / "photos"
    files = make_tree(source)
    async with session_of(org.alice) as session:
        await session.create_workspace("Docs")
        assert [w.name for w in await session.workspaces()] == ["Docs"]
        async with workspace_of(session, "Docs") as ws:
            await ws.upload(source, ("photos",))
            names = [e.name for e in await ws.entries(("photos",))]
            assert names == ["a.txt", "empty", "empty-dir", "sub"]
            big = await ws.resolve(("photos", "sub", "big.bin"))
            assert isinstance(big, FileManifest) and len(big.blocks) == 4
            await ws.download(("photos",), tmp_path / "back")
    assert read_tree(tmp_path / "back") == files
    assert (tmp_path / "back" / "empty-dir").is_dir()


async def test_new_versions_history_and_past_content(org: Organization, tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    async with session_of(org.alice) as session:
        await session.create_workspace("W")
        async with workspace_of(session, "W") as ws:
            await ws.mkdir(("dir",))
            instants = []
            for content in (b"one", b"two two", b"three three three"):
                local.write_bytes(content)
                await ws.upload(local, ("dir", "f.txt"))
                instants.append(DateTime.now())
            history = await ws.history(("dir", "f.txt"))
            assert [(v.version, v.size, v.author) for v in history] == [
                (1, 3, org.alice.device_id),
                (2, 7, org.alice.device_id),
                (3, 17, org.alice.device_id),
            ]
            await ws.download(("dir", "f.txt"), tmp_path / "old.txt", at=instants[0])
            assert (tmp_path / "old.txt").read_bytes() == b"one"


async def test_share_gives_the_key_and_removal_takes_access(
    org: Organization, tmp_path: Path
) -> None:
    (tmp_path / "x").write_bytes(b"shared content")
    async with session_of(org.alice) as alice:
        entry = await alice.create_workspace("Shared")
        async with workspace_of(alice, "Shared") as ws:
            await ws.upload(tmp_path / "x", ("x",))
        await alice.share(entry, org.bob.user_id, RealmRole.CONTRIBUTOR)
    async with session_of(org.bob) as bob:
        [bob_entry] = await bob.workspaces()
        assert bob_entry.role is RealmRole.CONTRIBUTOR and bob_entry.name == "Shared"
        async with workspace_of(bob, "Shared") as ws:
            await ws.download(("x",), tmp_path / "y")
        assert (tmp_path / "y").read_bytes() == b"shared content"
    async with session_of(org.alice) as alice:
        await alice.share(entry, org.bob.user_id, None)
    async with session_of(org.bob) as bob:
        [bob_entry] = await bob.workspaces()
        assert bob_entry.role is None
        with pytest.raises(FSNotFoundError):
            await bob.workspace_entry("Shared")
        with pytest.raises(FSNoAccessError):
            await bob.realm_roles(entry.id)


async def test_move_and_remove(org: Organization, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    async with session_of(org.alice) as session:
        await session.create_workspace("W")
        async with workspace_of(session, "W") as ws:
            await ws.mkdir(("a", "b"), parents=True)
            await ws.upload(tmp_path / "f", ("a", "f"))
            await ws.move(("a", "f"), ("a", "g"))
            await ws.move(("a", "g"), ("a", "b"))
            assert [e.name for e in await ws.entries(("a", "b"))] == ["g"]
            moved = await ws.resolve(("a", "b", "g"))
            assert isinstance(moved, FileManifest)
            assert moved.parent == (await ws.resolve(("a", "b"))).id
            assert [e.name for e in await ws.entries(("a",))] == ["b"]
            await ws.remove(("a", "b", "g"))
            assert await ws.entries(("a", "b")) == []
            with pytest.raises(FSNotFoundError):
                await ws.resolve(("a", "b", "g"))


async def test_concurrent_writers_keep_both_versions(org: Organization, tmp_path: Path) -> None:
    (tmp_path / "mine").write_bytes(b"mine")
    (tmp_path / "theirs").write_bytes(b"theirs")
    async with session_of(org.alice) as session:
        await session.create_workspace("W")
        async with workspace_of(session, "W") as ws:
            await ws.upload(tmp_path / "mine", ("doc.txt",))
            stale = await ws.resolve(("doc.txt",))
            assert isinstance(stale, FileManifest)
            await ws.upload(tmp_path / "theirs", ("doc.txt",))
            parent = await ws.root()
            await ws._update_file(stale, parent.id, "doc.txt", tmp_path / "mine", lambda _: None)
            names = [e.name for e in await ws.entries(())]
            copy = f"doc (conflicting with {org.alice.device_id}).txt"
            assert names == [copy, "doc.txt"]
            await ws.download((copy,), tmp_path / "c")
            await ws.download(("doc.txt",), tmp_path / "d")
    assert (tmp_path / "c").read_bytes() == b"mine"
    assert (tmp_path / "d").read_bytes() == b"theirs"


def test_conflict_names_are_those_of_the_reference() -> None:
    assert conflict_name("a.tar.gz", set(), "u@d") == "a (conflicting with u@d).tar.gz"
    assert conflict_name(".bashrc", set(), "u@d") == ".bashrc (conflicting with u@d)"
    taken = {"x (conflicting with u@d)"}
    assert conflict_name("x", taken, "u@d") == "x (conflicting with u@d - 2)"


# --- resuming an interrupted upload ---------------------------------------------------------


class Interrupted(Exception):
    pass


async def test_interrupted_upload_run_again_skips_the_blocks_stored(
    org: Organization, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "big.bin"
    content = os.urandom(6 * BLOCKSIZE + 17)
    local.write_bytes(content)
    journals = tmp_path / "journals"
    sent: list[int] = []
    original = Workspace._create_block

    async def create_block(self: Workspace, access: BlockAccess, ciphertext: bytes) -> None:
        if len(sent) == 3:
            raise Interrupted()
        await original(self, access, ciphertext)
        sent.append(access.offset)

    async with session_of(org.alice) as session:
        await session.create_workspace("W")
        async with resumable(session, "W", journals, parallel=1) as ws:
            monkeypatch.setattr(Workspace, "_create_block", create_block)
            with pytest.raises(Interrupted):
                await ws.upload(local, ("big.bin",))
            [journal] = list(journals.iterdir())
            # Encrypted: neither block ids nor offsets in clear.
            raw = journal.read_bytes()
            assert len(UploadJournal(journal, session.device.local_symkey).load()) == 3
            assert all(a.id.bytes not in raw for a in (await _journaled(ws, journal)).values())
            with pytest.raises(FSNotFoundError):
                await ws.resolve(("big.bin",))  # nothing named on the server
            monkeypatch.setattr(Workspace, "_create_block", original)
        async with resumable(session, "W", journals) as ws:
            await ws.upload(local, ("big.bin",))
            assert ws.skipped_blocks == 3
            assert list(journals.iterdir()) == []  # removed once complete
            await ws.download(("big.bin",), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == content


async def test_a_changed_file_does_not_reuse_its_journal(
    org: Organization, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(3 * BLOCKSIZE))
    journals = tmp_path / "journals"
    original = Workspace._create_block
    calls = 0

    async def create_block(self: Workspace, access: BlockAccess, ciphertext: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Interrupted()
        await original(self, access, ciphertext)

    async with session_of(org.alice) as session:
        await session.create_workspace("W")
        async with resumable(session, "W", journals) as ws:
            monkeypatch.setattr(Workspace, "_create_block", create_block)
            with pytest.raises(Interrupted):
                await ws.upload(local, ("f.bin",))
            monkeypatch.setattr(Workspace, "_create_block", original)
        changed = os.urandom(3 * BLOCKSIZE)
        local.write_bytes(changed)
        async with resumable(session, "W", journals) as ws:
            await ws.upload(local, ("f.bin",))
            assert ws.skipped_blocks == 0
            await ws.download(("f.bin",), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == changed


async def test_a_torn_journal_record_ends_the_journal(tmp_path: Path) -> None:
    key = os.urandom(32)
    journal = UploadJournal(tmp_path / "j.journal", key)
    accesses = [new_block_access(os.urandom(10), offset) for offset in (0, 10, 20)]
    for access in accesses:
        journal.record(access)
    raw = journal.path.read_bytes()
    journal.path.write_bytes(raw[:-5])
    assert list(journal.load().values()) == accesses[:2]
    assert UploadJournal(journal.path, os.urandom(32)).load() == {}


async def _journaled(ws: Workspace, journal: Path) -> dict[int, BlockAccess]:
    return UploadJournal(journal, ws.session.device.local_symkey).load()


@asynccontextmanager
async def resumable(
    session: Session, name: str, journals: Path, parallel: int = 3
) -> AsyncIterator[Workspace]:
    """With `parallel=1`, an interruption leaves exactly the blocks sent before it."""
    entry = await session.workspace_entry(name)
    async with ConnectionPool(session.device, parallel, first=session.conn) as pool:
        yield Workspace(
            session, entry, pool, parallel=parallel, blocksize=BLOCKSIZE, journal_dir=journals
        )


# --- re-encryption --------------------------------------------------------------------------


async def test_reencrypted_workspace_reads_for_every_member(
    org: Organization, tmp_path: Path
) -> None:
    local = tmp_path / "f.txt"
    local.write_bytes(b"before the new key")
    async with session_of(org.alice) as alice:
        entry = await alice.create_workspace("W")
        async with workspace_of(alice, "W") as ws:
            await ws.mkdir(("dir",))
            await ws.upload(local, ("dir", "f.txt"))
        await alice.share(entry, org.bob.user_id, RealmRole.READER)
    async with session_of(org.bob) as bob:
        with pytest.raises(FSNoAccessError):
            await reencrypt_workspace(bob, await bob.workspace_entry("W"))
    async with session_of(org.alice) as alice:
        done = await reencrypt_workspace(alice, await alice.workspace_entry("W"), batch_size=2)
        assert done.encryption_revision == 2
        assert done.vlobs == 5  # root v1-v2, dir v1-v2, file v1
        async with workspace_of(alice, "W") as ws:
            assert ws.entry.encryption_revision == 2
            await ws.upload(local, ("after.txt",))
    async with session_of(org.bob) as bob, workspace_of(bob, "W") as ws:
        assert ws.entry.encryption_revision == 2
        await ws.download(("dir", "f.txt"), tmp_path / "back.txt")
        assert [e.name for e in await ws.entries(())] == ["after.txt", "dir"]
    assert (tmp_path / "back.txt").read_bytes() == b"before the new key"
