"""A directory of block files (`--blockstore file:DIR`): the synchronous file operations,
which `FileBlockStore` runs in its worker threads (docs/storage-files.md).

Layout: `DIR/<organization id>/<first two hex digits of the block id>/<block id>`, the
block id as a lowercase UUID with hyphens. Organization ids are `[\\w-]{1,32}` (api/ids):
no `/`, no `.`, so never `..` nor a hidden name; `block_path` checks it again.

A block is written under a fresh random name in `DIR/.tmp`, synced, renamed to its place
(replacing what an earlier attempt left), and its directory synced: a block file is
always complete, and a reader never sees a partial one. A failure removes the temporary
file; a crash may leave one behind in `DIR/.tmp`, which nothing reads and the next start
removes once it is older than `STALE_TEMPORARY_AGE`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
import uuid
from pathlib import Path

from parsec_server.api.ids import is_valid_name
from parsec_server.backend.config import StartupError

TEMPORARY_DIRNAME = ".tmp"  # never an organization id (no `.` in those)
# Seconds after which a temporary file is a crash's leftover: no write takes that long
# (each is bounded by the blockstore's operation timeout), so removing older ones never
# disturbs another process writing in the same directory.
STALE_TEMPORARY_AGE = 3600.0
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


class BlockDirectory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.temporary = root / TEMPORARY_DIRNAME

    def block_path(self, organization_id: str, block_id: uuid.UUID) -> Path:
        if not is_valid_name(organization_id):
            raise ValueError(f"not an organization id: {organization_id!r}")
        name = str(block_id)
        return self.root / organization_id / name[:2] / name

    # Start-up and readiness

    def prepare(self) -> int:
        """Checks the directory at start-up; returns how many stale temporary files it
        removed. StartupError when the directory is missing or on a case-insensitive file
        system; OSError when it cannot be written."""
        if not self.root.exists():
            raise StartupError(
                f"Block directory `{self.root}` does not exist (create it, on the disk "
                "meant for the blocks)"
            )
        if not self.root.is_dir():
            raise StartupError(f"Block directory `{self.root}` is not a directory")
        self.temporary.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        self._check_case_sensitive()
        self.probe()
        return self.remove_stale_temporaries()

    def _check_case_sensitive(self) -> None:
        # Organization ids differ by case only ("a", "A"): they need directories of their own.
        name = f"case-probe-{secrets.token_hex(8)}"
        path = self.temporary / name
        path.touch(mode=FILE_MODE, exist_ok=False)
        try:
            shared = (self.temporary / name.upper()).exists()
        finally:
            path.unlink()
        if shared:
            raise StartupError(
                f"Block directory `{self.root}` is on a case-insensitive file system: "
                "organizations whose ids differ by case only would share their blocks"
            )

    def probe(self) -> int:
        """Creates and removes a file in the directory; returns the bytes available.
        OSError when that fails (disk read-only, unmounted, not ours)."""
        path = self._new_temporary()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.close(fd)
        os.unlink(path)
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def remove_stale_temporaries(self) -> int:
        removed = 0
        limit = time.time() - STALE_TEMPORARY_AGE
        with os.scandir(self.temporary) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # removed meanwhile (another process starting)
        return removed

    # Blocks

    def write(self, organization_id: str, block_id: uuid.UUID, data: bytes) -> None:
        target = self.block_path(organization_id, block_id)
        temporary = self._new_temporary()
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                self._write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._make_parents(target.parent)
            os.replace(temporary, target)
        except BaseException:
            _remove_quietly(temporary)
            raise
        _sync_directory(target.parent)

    def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | None:
        """The block's bytes, None when there is no such block. FileNotFoundError when
        the directory itself is gone (a disk not mounted): no block can be found then."""
        try:
            with open(self.block_path(organization_id, block_id), "rb") as file:
                return file.read()
        except FileNotFoundError:
            if not self.temporary.is_dir():
                raise FileNotFoundError(
                    errno.ENOENT, "block directory missing", str(self.temporary)
                ) from None
            return None

    def delete(self, organization_id: str, block_id: uuid.UUID) -> None:
        target = self.block_path(organization_id, block_id)
        try:
            os.unlink(target)
        except FileNotFoundError:
            return
        _sync_directory(target.parent)

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._write(fd, view)
            if written <= 0:  # not expected of a regular file; never loop forever
                raise OSError(errno.EIO, "write wrote nothing")
            view = view[written:]

    def _write(self, fd: int, data: memoryview) -> int:
        """One `write` system call (what the tests replace to inject disk failures)."""
        return os.write(fd, data)

    def _make_parents(self, shard: Path) -> None:
        """Creates the organization and shard directories if needed, each new directory
        synced into its parent."""
        if shard.is_dir():
            return
        for directory in (shard.parent, shard):
            try:
                os.mkdir(directory, DIRECTORY_MODE)
            except FileExistsError:
                continue
            _sync_directory(directory.parent)

    def _new_temporary(self) -> Path:
        return self.temporary / secrets.token_hex(16)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    # Not created, or the disk refuses even that (the start-up sweep will remove it).
    with contextlib.suppress(OSError):
        os.unlink(path)
