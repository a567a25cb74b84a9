"""A consistent copy of a SQLite database and its block directory, taken while the server
runs (`parsec backend backup`, docs/data-dir.md).

1. The database, with SQLite's online backup in one step: one read transaction, hence one
   snapshot, while the server goes on writing (WAL: readers and the writer do not wait
   for each other).
2. Then the block files. A block's file is written before its metadata is committed and
   never changed afterwards, so the files copied after the snapshot include every block
   the snapshot refers to; blocks created since are extra and harmless.
3. Then the check: every block of the copied database has its file in the copy, of the
   recorded size.

The copy is laid out as a data directory (`OUT/parsec.sqlite`, `OUT/blocks/`): a server
runs on it with `--data-dir OUT`. The database only takes its name at the end (it is
written as `OUT/.parsec.sqlite.partial`), so an interrupted backup never looks complete.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from parsec_server.backend.blockstore.blockdir import TEMPORARY_DIRNAME, BlockDirectory
from parsec_server.backend.data_dir import BLOCKS_DIRNAME, DATABASE_FILENAME

PARTIAL_DATABASE_FILENAME = ".parsec.sqlite.partial"
# Milliseconds the backup's read waits for a lock (a migration running).
BUSY_TIMEOUT_MS = 30_000

_SQL_BLOCKS = """
SELECT organization.organization_id, block.block_id, block.size
FROM block JOIN organization ON organization._id = block.organization
"""


class BackupError(Exception):
    """A backup that cannot be taken or is incomplete (one line for the operator)."""


@dataclass(frozen=True, slots=True)
class BackupReport:
    blocks_copied: int  # block files copied (more than the database knows, possibly)
    blocks_checked: int  # blocks of the copied database, each found in the copy


def backup(
    database: Path,
    blocks: Path | None,
    out: Path,
    on_block_file: Callable[[], None] = lambda: None,
) -> BackupReport:
    """Copies `database` (and the block directory `blocks`, if any) into the new or
    empty directory `out`; BackupError if it cannot or if a block is missing."""
    if not database.is_file():
        raise BackupError(f"SQLite database {database} does not exist")
    _prepare_out(out)
    partial = out / PARTIAL_DATABASE_FILENAME
    snapshot_database(database, partial)
    copied = 0
    checked = 0
    if blocks is not None:
        for source, relative in block_files(blocks):
            target = out / BLOCKS_DIRNAME / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied += 1
            on_block_file()
        missing = missing_blocks(partial, BlockDirectory(out / BLOCKS_DIRNAME))
        if missing:
            raise BackupError(
                f"{len(missing)} block(s) of the database have no file in {blocks} "
                f"(first: {missing[0]}): the backup in {out} is incomplete"
            )
        checked = count_blocks(partial)
    os.sync()  # every copied file on disk before the database says the copy is complete
    partial.rename(out / DATABASE_FILENAME)
    return BackupReport(copied, checked)


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} is not a new or empty directory")
    (out / BLOCKS_DIRNAME).mkdir(parents=True, exist_ok=True)


def snapshot_database(database: Path, target: Path) -> None:
    """SQLite's online backup of `database` into the new file `target`, in one step."""
    source = sqlite3.connect(f"file:{quote(str(database))}?mode=ro", uri=True)
    try:
        source.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        destination = sqlite3.connect(target)
        try:
            source.backup(destination)  # pages=-1: every page under one read transaction
            # One self-contained file (no -wal, -shm beside it); the server sets WAL again.
            destination.execute("PRAGMA journal_mode = DELETE")
        finally:
            destination.close()
    finally:
        source.close()


def block_files(root: Path) -> Iterator[tuple[Path, Path]]:
    """The block files of a block directory, `(path, path relative to root)`; the
    temporary files of writes in progress are not blocks."""
    for organization in sorted(os.scandir(root), key=lambda entry: entry.name):
        if organization.name == TEMPORARY_DIRNAME or not organization.is_dir():
            continue
        for shard in sorted(os.scandir(organization.path), key=lambda entry: entry.name):
            if not shard.is_dir():
                continue
            for block in os.scandir(shard.path):
                if block.is_file(follow_symlinks=False):
                    path = Path(block.path)
                    yield path, path.relative_to(root)


def _blocks_of(database: Path) -> Iterator[tuple[str, uuid.UUID, int]]:
    conn = sqlite3.connect(f"file:{quote(str(database))}?mode=ro", uri=True)
    try:
        for organization_id, block_id, size in conn.execute(_SQL_BLOCKS):
            yield organization_id, uuid.UUID(bytes=block_id), size
    finally:
        conn.close()


def missing_blocks(database: Path, directory: BlockDirectory) -> list[str]:
    """`<organization>/<block id>` of the blocks of `database` without a file of their
    size in `directory`."""
    missing = []
    for organization_id, block_id, size in _blocks_of(database):
        path = directory.block_path(organization_id, block_id)
        try:
            present = path.stat().st_size == size
        except FileNotFoundError:
            present = False
        if not present:
            missing.append(f"{organization_id}/{block_id}")
    return missing


def count_blocks(database: Path) -> int:
    return sum(1 for _ in _blocks_of(database))
