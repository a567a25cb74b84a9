"""`--data-dir DIR`: the whole server's data in one directory (docs/data-dir.md):

    DIR/parsec.sqlite   the metadata (`--db sqlite:DIR/parsec.sqlite`)
    DIR/blocks/         the blocks (`--blockstore file:DIR/blocks`)

A missing or empty directory is a new one, initialised at the first start (the database
created and migrated, the block directory created); an existing one is used as it is,
and the server refuses to start on it if its database needs migrating, as for PostgreSQL.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from parsec_server.backend.config import StartupError

DATA_DIR_ENVVAR = "PARSEC_DATA_DIR"
DATABASE_FILENAME = "parsec.sqlite"
BLOCKS_DIRNAME = "blocks"


def database_path(data_dir: Path) -> Path:
    return data_dir.absolute() / DATABASE_FILENAME


def blocks_path(data_dir: Path) -> Path:
    return data_dir.absolute() / BLOCKS_DIRNAME


def storage_args(data_dir: Path) -> list[str]:
    """The `--db` and `--blockstore` arguments the data directory stands for."""
    database, blocks = database_path(data_dir), blocks_path(data_dir)
    return ["--db", f"sqlite:{database}", "--blockstore", f"file:{blocks}"]


def is_new(data_dir: Path) -> bool:
    """Missing, empty, or left by an initialisation interrupted before its database was
    created (nothing but an empty `blocks/`)."""
    if not data_dir.exists():
        return True
    if not data_dir.is_dir():
        raise StartupError(f"Data directory `{data_dir}` is not a directory")
    entries = {entry.name: entry for entry in os.scandir(data_dir)}
    if not entries:
        return True
    blocks = entries.get(BLOCKS_DIRNAME)
    return (
        len(entries) == 1
        and blocks is not None
        and blocks.is_dir(follow_symlinks=False)
        and not any(os.scandir(blocks.path))
    )


def prepare_data_dir(data_dir: Path) -> bool:
    """Initialises a new data directory (True), or checks that an existing one is a data
    directory (False). StartupError, one line, otherwise."""
    from parsec_server.backend.storage.sqlite.migrations import MigrationStatus, migrate_file

    if not is_new(data_dir):
        if not database_path(data_dir).is_file():
            raise StartupError(
                f"Data directory `{data_dir}` is not empty and has no {DATABASE_FILENAME}: "
                "not a Parsec data directory (give a new or empty directory)"
            )
        return False
    try:
        blocks_path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        outcomes = migrate_file(database_path(data_dir))
    except OSError as exc:
        raise StartupError(
            f"Cannot initialise data directory `{data_dir}`: {exc.strerror or exc}"
        ) from exc
    except sqlite3.Error as exc:
        raise StartupError(f"Cannot initialise data directory `{data_dir}`: {exc}") from exc
    failed = [outcome for outcome in outcomes if outcome.status is MigrationStatus.FAILED]
    if failed:
        raise StartupError(f"Cannot initialise data directory `{data_dir}`: {failed[0].line}")
    return True
