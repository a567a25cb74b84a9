"""The files and folders of one workspace, read and written on the server directly (no
local cache): every operation is on the server when it returns.

Writes follow the 2.0.0 client's order, so that nothing is ever half-visible: a file's
blocks, then its manifest, then the parent folder's manifest naming it (for a tree: the
whole subtree bottom-up, then one parent update). A manifest written concurrently by
someone else (`bad_version`) is read again and the change applied again; a file changed
by two writers keeps both versions, ours under the 2.0.0 client's conflict name
(`name (conflicting with <device>).ext`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import BinaryIO

import msgspec

from parsec_server.api.codec import ID, DateTime
from parsec_server.client.blocks import decrypt_block, encrypt_block, matches, new_block_access
from parsec_server.client.directory import TrustError
from parsec_server.client.fs_errors import (
    FSConflictError,
    FSDirectoryNotEmptyError,
    FSError,
    FSExistsError,
    FSIsADirectoryError,
    FSNoAccessError,
    FSNotADirectoryError,
    FSNotFoundError,
)
from parsec_server.client.manifests import (
    DEFAULT_BLOCKSIZE,
    BlockAccess,
    FileManifest,
    FolderManifest,
    Manifest,
    UserManifest,
    WorkspaceEntry,
    WorkspaceManifest,
    dump_manifest,
    load_manifest,
)
from parsec_server.client.organization import CommandFailed
from parsec_server.client.pool import ConnectionPool
from parsec_server.client.signed_data import DataError
from parsec_server.client.upload_journal import UploadJournal
from parsec_server.client.workspaces import Session

Folderish = WorkspaceManifest | FolderManifest
Progress = Callable[[int], None]
_MAX_ATTEMPTS = 10
_PART_SUFFIX = ".parsec-part"


class LocalIOError(FSError):
    """Reading or writing a local file failed (disk full, permissions...)."""


def _no_progress(_: int) -> None:
    pass


def _full_name(name: str, suffix: str) -> str:
    """`name (suffix)`, before the extension when there is one (not for dot files)."""
    if "." not in name[1:]:
        return f"{name} ({suffix})"
    first, *extensions = name.split(".")
    return ".".join([f"{first} ({suffix})", *extensions])


def conflict_name(name: str, taken: set[str], author: str | None) -> str:
    """The 2.0.0 client's name for our copy of `name` changed concurrently by `author`."""
    candidate = _full_name(name, f"conflicting with {author}")
    numbers = count(2)
    while candidate in taken:
        candidate = _full_name(name, f"conflicting with {author} - {next(numbers)}")
    return candidate


@dataclass(frozen=True)
class EntryInfo:
    name: str
    id: ID
    kind: str  # "file" or "folder"
    size: int | None
    version: int
    updated: DateTime
    author: str | None


@dataclass(frozen=True)
class VersionInfo:
    version: int
    timestamp: DateTime
    author: str
    size: int | None


def _info(name: str, manifest: Manifest) -> EntryInfo:
    is_file = isinstance(manifest, FileManifest)
    return EntryInfo(
        name=name,
        id=manifest.id,
        kind="file" if is_file else "folder",
        size=manifest.size if isinstance(manifest, FileManifest) else None,
        version=manifest.version,
        updated=manifest.updated,
        author=manifest.author,
    )


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def _is_dir(path: Path) -> bool:
    return await asyncio.to_thread(path.is_dir)


def _local_error(path: Path, exc: OSError) -> LocalIOError:
    return LocalIOError(f"{path}: {exc.strerror or exc}")


class Workspace:
    """One workspace of the session's device. Transfers of blocks go through `pool`.
    With `journal_dir`, uploads record the blocks they store there (upload_journal.py),
    and an upload run again after an interruption skips them."""

    def __init__(
        self,
        session: Session,
        entry: WorkspaceEntry,
        pool: ConnectionPool,
        parallel: int = 4,
        blocksize: int = DEFAULT_BLOCKSIZE,
        journal_dir: Path | None = None,
    ) -> None:
        self.session = session
        self.entry = entry
        self.pool = pool
        self.parallel = parallel
        self.blocksize = blocksize
        self.journal_dir = journal_dir
        self._journals: list[UploadJournal] = []  # of the upload running
        self.skipped_blocks = 0  # found in a journal, not uploaded again

    @property
    def id(self) -> ID:
        return self.entry.id

    @property
    def _author(self) -> str:
        return self.session.device.device_id

    async def _refresh_entry(self) -> None:
        """The workspace's key may have changed (re-encryption): learn the new one."""
        manifest: UserManifest = await self.session.process_messages()
        entry = manifest.workspace(self.id)
        if entry is None or entry.role is None:
            raise FSNoAccessError(f"No access to workspace `{self.entry.name}`")
        if entry.encryption_revision == self.entry.encryption_revision:
            raise FSError(f"Workspace `{self.entry.name}` was re-encrypted; its new key is unknown")
        self.entry = entry

    def _check_status(self, reply: dict[str, object], what: str) -> None:
        status = reply["status"]
        if status == "ok":
            return
        if status == "not_allowed":
            raise FSNoAccessError(f"Not allowed to {what} in workspace `{self.entry.name}`")
        if status == "in_maintenance":
            raise FSError(f"Workspace `{self.entry.name}` is being re-encrypted; try again later")
        raise CommandFailed(dict(reply))

    # --- manifests ----------------------------------------------------------------------

    async def read(
        self, entry_id: ID, *, version: int | None = None, at: DateTime | None = None
    ) -> Manifest:
        for attempt in range(2):
            reply = await self.session.cmd(
                "vlob_read",
                encryption_revision=self.entry.encryption_revision,
                vlob_id=entry_id,
                version=version,
                timestamp=at,
            )
            status = reply["status"]
            if status == "bad_encryption_revision" and attempt == 0:
                await self._refresh_entry()
                continue
            if status in ("not_found", "bad_version"):
                raise FSNotFoundError(f"Entry {entry_id.hex} not found")
            self._check_status(reply, "read")
            try:
                return load_manifest(
                    reply["blob"],
                    self.entry.key,
                    await self.session.directory.verify_key(reply["author"]),
                    expected_author=reply["author"],
                    expected_timestamp=reply["timestamp"],
                    expected_id=entry_id,
                    expected_version=reply["version"],
                )
            except (DataError, TrustError) as exc:
                raise FSError(f"Invalid manifest {entry_id.hex}: {exc}") from exc
        raise FSError(f"Workspace `{self.entry.name}` keeps being re-encrypted")

    async def write(self, manifest: Manifest) -> bool:
        """Store this version; False when someone else stored it first."""
        for attempt in range(2):
            blob = dump_manifest(manifest, self.session.device.signing_key, self.entry.key)
            common = {
                "encryption_revision": self.entry.encryption_revision,
                "vlob_id": manifest.id,
                "timestamp": manifest.timestamp,
                "blob": blob,
            }
            if manifest.version == 1:
                reply = await self.session.cmd("vlob_create", realm_id=self.id, **common)
            else:
                reply = await self.session.cmd("vlob_update", version=manifest.version, **common)
            status = reply["status"]
            if status == "bad_encryption_revision" and attempt == 0:
                await self._refresh_entry()
                continue
            if status in ("already_exists", "bad_version"):
                return False
            self._check_status(reply, "write")
            return True
        raise FSError(f"Workspace `{self.entry.name}` keeps being re-encrypted")

    def _next(self, manifest: Manifest, **changes: object) -> Manifest:
        now = DateTime.now()
        return msgspec.structs.replace(
            manifest,
            author=self._author,
            timestamp=now,
            version=manifest.version + 1,
            updated=now,
            **changes,
        )

    async def _update_folder(
        self, folder_id: ID, change: Callable[[Folderish], dict[str, ID] | None]
    ) -> Folderish:
        """Write the folder's next version with the children `change` returns (None:
        nothing to write), applied again on a newer version when one appears."""
        for _ in range(_MAX_ATTEMPTS):
            current = await self.read(folder_id)
            if not isinstance(current, WorkspaceManifest | FolderManifest):
                raise FSNotADirectoryError(f"Entry {folder_id.hex} is not a folder")
            children = change(current)
            if children is None:
                return current
            new = self._next(current, children=children)
            assert isinstance(new, WorkspaceManifest | FolderManifest)
            if await self.write(new):
                return new
        raise FSConflictError("The folder keeps changing; try again")

    async def _link(self, folder_id: ID, name: str, child_id: ID) -> str:
        """Name `child_id` in the folder; the 2.0.0 client's conflict name when the name
        was taken meanwhile. Returns the name given."""
        given = name

        def change(folder: Folderish) -> dict[str, ID]:
            nonlocal given
            given = name
            if folder.children.get(name, child_id) != child_id:
                given = conflict_name(name, set(folder.children), folder.author)
            return {**folder.children, given: child_id}

        await self._update_folder(folder_id, change)
        return given

    # --- paths --------------------------------------------------------------------------

    async def root(self, at: DateTime | None = None) -> WorkspaceManifest:
        manifest = await self.read(self.id, at=at)
        if not isinstance(manifest, WorkspaceManifest):
            raise FSError("The workspace's root is not a workspace manifest")
        return manifest

    async def resolve(self, parts: tuple[str, ...], at: DateTime | None = None) -> Manifest:
        manifest: Manifest = await self.root(at)
        for depth, name in enumerate(parts):
            if not isinstance(manifest, WorkspaceManifest | FolderManifest):
                raise FSNotADirectoryError(f"/{'/'.join(parts[:depth])} is not a folder")
            child = manifest.children.get(name)
            if child is None:
                raise FSNotFoundError(f"/{'/'.join(parts[: depth + 1])} not found")
            manifest = await self.read(child, at=at)
        return manifest

    async def resolve_folder(self, parts: tuple[str, ...]) -> Folderish:
        manifest = await self.resolve(parts)
        if not isinstance(manifest, WorkspaceManifest | FolderManifest):
            raise FSNotADirectoryError(f"/{'/'.join(parts)} is not a folder")
        return manifest

    # --- listing ------------------------------------------------------------------------

    async def entries(self, parts: tuple[str, ...], at: DateTime | None = None) -> list[EntryInfo]:
        """The entries of a folder (or the file itself), sorted by name."""
        manifest = await self.resolve(parts, at)
        if not isinstance(manifest, WorkspaceManifest | FolderManifest):
            return [_info(parts[-1], manifest)]
        children = sorted(manifest.children.items())
        manifests = await asyncio.gather(*(self.read(i, at=at) for _, i in children))
        return [_info(name, m) for (name, _), m in zip(children, manifests, strict=True)]

    # --- folders ------------------------------------------------------------------------

    def _new_folder(self, folder_id: ID, parent: ID, children: dict[str, ID]) -> FolderManifest:
        now = DateTime.now()
        return FolderManifest(
            author=self._author,
            timestamp=now,
            id=folder_id,
            version=1,
            created=now,
            updated=now,
            parent=parent,
            children=children,
        )

    async def mkdir(self, parts: tuple[str, ...], parents: bool = False) -> ID:
        if not parts:
            raise FSExistsError("The workspace's root exists")
        folder: Folderish = await self.root()
        for depth, name in enumerate(parts):
            last = depth == len(parts) - 1
            child = folder.children.get(name)
            if child is not None:
                existing = await self.read(child)
                if not isinstance(existing, FolderManifest):
                    raise FSNotADirectoryError(f"/{'/'.join(parts[: depth + 1])} is a file")
                if last and not parents:
                    raise FSExistsError(f"/{'/'.join(parts)} already exists")
                folder = existing
                continue
            if not last and not parents:
                raise FSNotFoundError(f"/{'/'.join(parts[: depth + 1])} not found")
            new = self._new_folder(ID.new(), folder.id, {})
            if not await self.write(new):
                raise FSConflictError("Folder id already used")
            await self._link(folder.id, name, new.id)
            folder = new
        return folder.id

    # --- blocks -------------------------------------------------------------------------

    async def _create_block(self, access: BlockAccess, ciphertext: bytes) -> None:
        reply = await self.pool.cmd(
            "block_create", block_id=access.id, realm_id=self.id, block=ciphertext
        )
        if reply["status"] == "timeout":
            raise FSError("The server could not store a block (block store unavailable)")
        self._check_status(reply, "write")

    async def _read_block(self, access: BlockAccess) -> bytes:
        reply = await self.pool.cmd("block_read", block_id=access.id)
        if reply["status"] == "not_found":
            raise FSError(f"Block {access.id.hex} is missing on the server")
        if reply["status"] == "timeout":
            raise FSError("The server could not read a block (block store unavailable)")
        self._check_status(reply, "read")
        try:
            return await asyncio.to_thread(decrypt_block, access, reply["block"])
        except DataError as exc:
            raise FSError(str(exc)) from exc

    async def _store_content(
        self, local: Path, progress: Progress
    ) -> tuple[int, tuple[BlockAccess, ...]]:
        """Cut the local file into blocks and store them, `parallel` at a time (memory:
        about 2 x parallel blocks); returns the size and the blocks. Blocks the journal
        of this local file records as stored (same size and digest) are not sent again."""
        accesses: list[BlockAccess] = []
        queue: asyncio.Queue[tuple[BlockAccess, bytes] | None] = asyncio.Queue(self.parallel)
        journal = await self._journal(local)
        stored = await asyncio.to_thread(journal.load) if journal is not None else {}

        async def send() -> None:
            while (item := await queue.get()) is not None:
                await self._create_block(*item)
                if journal is not None:
                    await asyncio.to_thread(journal.record, item[0])
                progress(item[0].size)

        read_error: LocalIOError | None = None

        async def read() -> None:
            # A local read error lets the blocks already read be stored (and journaled)
            # before it is raised: the upload run again skips them.
            nonlocal read_error
            offset = 0
            try:
                with local.open("rb") as stream:
                    while data := await asyncio.to_thread(_read_exactly, stream, self.blocksize):
                        previous = stored.get(offset)
                        if previous is not None and await asyncio.to_thread(
                            matches, previous, data
                        ):
                            accesses.append(previous)
                            self.skipped_blocks += 1
                            progress(len(data))
                            offset += len(data)
                            continue
                        access = new_block_access(data, offset)
                        ciphertext = await asyncio.to_thread(encrypt_block, access, data)
                        accesses.append(access)
                        await queue.put((access, ciphertext))
                        offset += len(data)
            except OSError as exc:
                read_error = _local_error(local, exc)
                read_error.__cause__ = exc
            for _ in range(self.parallel):
                await queue.put(None)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read())
                for _ in range(self.parallel):
                    group.create_task(send())
        except BaseExceptionGroup as group_exc:
            raise group_exc.exceptions[0] from None
        if read_error is not None:
            raise read_error
        return sum(a.size for a in accesses), tuple(accesses)

    async def _journal(self, local: Path) -> UploadJournal | None:
        if self.journal_dir is None:
            return None
        try:
            journal = await asyncio.to_thread(
                UploadJournal.for_file,
                self.journal_dir,
                self.session.device.local_symkey,
                self.id,
                local,
                self.blocksize,
            )
        except OSError as exc:
            raise _local_error(local, exc) from exc
        self._journals.append(journal)
        return journal

    # --- upload -------------------------------------------------------------------------

    def _new_file(
        self, file_id: ID, parent: ID, size: int, blocks: tuple[BlockAccess, ...]
    ) -> FileManifest:
        now = DateTime.now()
        return FileManifest(
            author=self._author,
            timestamp=now,
            id=file_id,
            version=1,
            created=now,
            updated=now,
            parent=parent,
            size=size,
            blocksize=self.blocksize,
            blocks=blocks,
        )

    async def _create_tree(self, local: Path, parent: ID, progress: Progress) -> ID:
        """Store a local file or folder tree as new entries (bottom-up, children first);
        returns the id of its top, not yet named in any folder."""
        entry_id = ID.new()
        if await _is_dir(local):
            children = {}
            try:
                names = sorted(os.listdir(local))
            except OSError as exc:
                raise _local_error(local, exc) from exc
            for name in names:
                children[name] = await self._create_tree(local / name, entry_id, progress)
            manifest: Manifest = self._new_folder(entry_id, parent, children)
        else:
            size, blocks = await self._store_content(local, progress)
            manifest = self._new_file(entry_id, parent, size, blocks)
        if not await self.write(manifest):
            raise FSConflictError("Entry id already used")
        return entry_id

    async def _update_file(
        self, current: FileManifest, parent: ID, name: str, local: Path, progress: Progress
    ) -> None:
        """A new version of the file with the local content; a conflict copy when someone
        else wrote a version meanwhile."""
        size, blocks = await self._store_content(local, progress)
        new = self._next(current, size=size, blocksize=self.blocksize, blocks=blocks)
        if await self.write(new):
            return
        theirs = await self.read(current.id)
        copy = self._new_file(ID.new(), parent, size, blocks)
        if not await self.write(copy):
            raise FSConflictError("Entry id already used")

        def change(folder: Folderish) -> dict[str, ID]:
            taken = set(folder.children)
            return {**folder.children, conflict_name(name, taken, theirs.author): copy.id}

        await self._update_folder(parent, change)

    async def _upload_into(
        self, local: Path, folder: Folderish, name: str, progress: Progress
    ) -> None:
        existing_id = folder.children.get(name)
        if existing_id is None:
            new_id = await self._create_tree(local, folder.id, progress)
            await self._link(folder.id, name, new_id)
            return
        existing = await self.read(existing_id)
        if await _is_dir(local):
            if not isinstance(existing, FolderManifest):
                raise FSNotADirectoryError(f"`{name}` exists and is a file")
            await self._merge_dir(local, existing, progress)
        elif isinstance(existing, FileManifest):
            await self._update_file(existing, folder.id, name, local, progress)
        else:
            raise FSIsADirectoryError(f"`{name}` exists and is a folder")

    async def _merge_dir(self, local: Path, folder: Folderish, progress: Progress) -> None:
        try:
            names = sorted(os.listdir(local))
        except OSError as exc:
            raise _local_error(local, exc) from exc
        for name in names:
            await self._upload_into(local / name, folder, name, progress)
            folder = await self.resolve_folder_by_id(folder.id)

    async def resolve_folder_by_id(self, folder_id: ID) -> Folderish:
        manifest = await self.read(folder_id)
        if not isinstance(manifest, WorkspaceManifest | FolderManifest):
            raise FSNotADirectoryError(f"Entry {folder_id.hex} is not a folder")
        return manifest

    async def upload(
        self, local: Path, parts: tuple[str, ...], progress: Progress = _no_progress
    ) -> None:
        """`parts` becomes the local file or tree (a folder tree merges into an existing
        folder; a file given an existing folder goes inside it). The journals of the
        upload are removed once it is complete, kept when it fails."""
        if not await asyncio.to_thread(local.exists):
            raise LocalIOError(f"{local}: No such file or directory")
        self._journals = []
        await self._upload(local, parts, progress)
        for journal in self._journals:
            await asyncio.to_thread(journal.remove)

    async def _upload(self, local: Path, parts: tuple[str, ...], progress: Progress) -> None:
        try:
            target = await self.resolve(parts)
        except FSNotFoundError:
            target = None
        if target is None:
            if not parts:
                raise FSError("Cannot replace the workspace's root")
            parent = await self.resolve_folder(parts[:-1])
            await self._upload_into(local, parent, parts[-1], progress)
        elif isinstance(target, WorkspaceManifest | FolderManifest):
            if await _is_dir(local):
                await self._merge_dir(local, target, progress)
            else:
                await self._upload_into(local, target, local.name, progress)
        else:
            if await _is_dir(local):
                raise FSNotADirectoryError(f"/{'/'.join(parts)} is a file")
            assert isinstance(target, FileManifest)
            parent = await self.resolve_folder(parts[:-1])
            await self._update_file(target, parent.id, parts[-1], local, progress)

    # --- download -----------------------------------------------------------------------

    async def _fetch_content(
        self, manifest: FileManifest, stream: BinaryIO, progress: Progress
    ) -> None:
        window: deque[asyncio.Task[bytes]] = deque()
        pending = iter(manifest.blocks)
        try:
            while True:
                while len(window) < self.parallel and (access := next(pending, None)) is not None:
                    window.append(asyncio.ensure_future(self._read_block(access)))
                if not window:
                    return
                data = await window.popleft()
                await asyncio.to_thread(stream.write, data)
                progress(len(data))
        finally:
            for task in window:
                task.cancel()

    async def _download_file(self, manifest: FileManifest, local: Path, progress: Progress) -> None:
        """Into `<local>.parsec-part`, renamed once complete (removed on failure)."""
        part = local.with_name(local.name + _PART_SUFFIX)
        try:
            with part.open("wb") as stream:
                await self._fetch_content(manifest, stream, progress)
            part.replace(local)
        except OSError as exc:
            with contextlib.suppress(OSError):
                part.unlink()
            raise _local_error(local, exc) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise

    async def _download_tree(
        self, manifest: Manifest, local: Path, at: DateTime | None, progress: Progress
    ) -> None:
        if isinstance(manifest, FileManifest):
            await self._download_file(manifest, local, progress)
            return
        assert isinstance(manifest, WorkspaceManifest | FolderManifest)
        try:
            await asyncio.to_thread(local.mkdir, exist_ok=True)
        except OSError as exc:
            raise _local_error(local, exc) from exc
        for name, child_id in sorted(manifest.children.items()):
            child = await self.read(child_id, at=at)
            await self._download_tree(child, local / name, at, progress)

    async def stat(self, parts: tuple[str, ...], at: DateTime | None = None) -> Manifest:
        return await self.resolve(parts, at)

    async def download(
        self,
        parts: tuple[str, ...],
        local: Path,
        at: DateTime | None = None,
        progress: Progress = _no_progress,
    ) -> None:
        """`local` becomes the remote file or tree (a file given an existing local folder
        goes inside it); `at`: as it was then."""
        manifest = await self.resolve(parts, at)
        if isinstance(manifest, FileManifest) and await _is_dir(local):
            local = local / (parts[-1] if parts else self.entry.name)
        await self._download_tree(manifest, local, at, progress)

    # --- remove, move -------------------------------------------------------------------

    async def remove(self, parts: tuple[str, ...], recursive: bool = False) -> None:
        if not parts:
            raise FSError("Cannot remove the workspace's root")
        target = await self.resolve(parts)
        if isinstance(target, FolderManifest) and target.children and not recursive:
            raise FSDirectoryNotEmptyError(f"/{'/'.join(parts)} is not empty (use --recursive)")
        parent = await self.resolve_folder(parts[:-1])
        name = parts[-1]

        def change(folder: Folderish) -> dict[str, ID] | None:
            if folder.children.get(name) != target.id:
                return None
            return {n: i for n, i in folder.children.items() if n != name}

        await self._update_folder(parent.id, change)

    async def move(self, source: tuple[str, ...], destination: tuple[str, ...]) -> None:
        """Rename or move an entry (to an existing folder: inside it), within the workspace."""
        if not source:
            raise FSError("Cannot move the workspace's root")
        target = await self.resolve(source)
        try:
            existing = await self.resolve(destination)
        except FSNotFoundError:
            existing = None
        if isinstance(existing, WorkspaceManifest | FolderManifest):
            destination = (*destination, source[-1])
        elif existing is not None:
            raise FSExistsError(f"/{'/'.join(destination)} already exists")
        if destination[: len(source)] == source:
            raise FSError("Cannot move a folder inside itself")
        source_parent = await self.resolve_folder(source[:-1])
        destination_parent = await self.resolve_folder(destination[:-1])
        name = destination[-1]
        if name in destination_parent.children:
            raise FSExistsError(f"/{'/'.join(destination)} already exists")
        if source_parent.id == destination_parent.id:

            def rename(folder: Folderish) -> dict[str, ID] | None:
                if folder.children.get(source[-1]) != target.id:
                    raise FSNotFoundError(f"/{'/'.join(source)} changed meanwhile")
                children = {n: i for n, i in folder.children.items() if n != source[-1]}
                if name in children:
                    raise FSExistsError(f"/{'/'.join(destination)} already exists")
                return {**children, name: target.id}

            await self._update_folder(source_parent.id, rename)
            return
        # Across folders: the entry's manifest names its new parent, then the destination
        # names it, then the source forgets it (never absent from both).
        moved = self._next(target, parent=destination_parent.id)
        if not await self.write(moved):
            raise FSConflictError(f"/{'/'.join(source)} changed meanwhile; try again")
        await self._link(destination_parent.id, name, target.id)

        def forget(folder: Folderish) -> dict[str, ID] | None:
            if folder.children.get(source[-1]) != target.id:
                return None
            return {n: i for n, i in folder.children.items() if n != source[-1]}

        await self._update_folder(source_parent.id, forget)

    # --- history ------------------------------------------------------------------------

    async def history(self, parts: tuple[str, ...]) -> list[VersionInfo]:
        target = await self.resolve(parts)
        reply = await self.session.cmd("vlob_list_versions", vlob_id=target.id)
        self._check_status(reply, "read")
        versions: dict[int, list[object]] = reply["versions"]
        infos = []
        for version in sorted(versions):
            timestamp, author = versions[version]
            manifest = await self.read(target.id, version=version)
            assert isinstance(timestamp, DateTime) and isinstance(author, str)
            size = manifest.size if isinstance(manifest, FileManifest) else None
            infos.append(VersionInfo(version, timestamp, author, size))
        return infos
