"""`parsec backend backup`: a consistent copy of a SQLite database and its block
directory, taken while the server runs (backend/backup.py, docs/data-dir.md)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.backup import BackupError, backup
from parsec_server.backend.config import SQLITE_PREFIX, FileBlockstoreConfig
from parsec_server.backend.data_dir import DATA_DIR_ENVVAR, blocks_path, database_path
from parsec_server.cli.blockstore_params import parse_blockstore_params
from parsec_server.cli.db_params import sqlite_path_of


def _sources(
    data_dir: Path | None, db: str | None, blockstore: str | None
) -> tuple[Path, Path | None]:
    """The database file and the block directory (None: blocks kept elsewhere)."""
    if data_dir is not None:
        if db or blockstore:
            raise click.UsageError("--data-dir sets --db and --blockstore: give either")
        return database_path(data_dir), blocks_path(data_dir)
    if not db:
        raise click.UsageError("Missing option '--data-dir' (or '--db')")
    if not db.startswith(SQLITE_PREFIX):
        raise click.UsageError(
            "backup copies SQLite databases (`sqlite:PATH`); PostgreSQL: pg_dump "
            "(docs/deployment.md, Backups)"
        )
    if blockstore is None:
        return sqlite_path_of(db), None
    config = parse_blockstore_params([blockstore])
    if not isinstance(config, FileBlockstoreConfig):
        raise click.UsageError(
            "backup copies block directories (`file:DIR`); back up the blocks of "
            f"{config.type_name} with its own tools after the database (docs/deployment.md)"
        )
    return sqlite_path_of(db), config.path


@click.command(short_help="Copy a SQLite database and its blocks while the server runs")
@click.option(
    "--data-dir",
    envvar=DATA_DIR_ENVVAR,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The server's data directory (DIR/parsec.sqlite and DIR/blocks)",
)
@click.option(
    "--db",
    envvar="PARSEC_DB",
    show_envvar=True,
    metavar="sqlite:PATH",
    help="Without --data-dir: the SQLite database",
)
@click.option(
    "--blockstore",
    envvar="PARSEC_BLOCKSTORE",
    show_envvar=True,
    metavar="file:DIR",
    help="Without --data-dir: the block directory (other stores: only the database is copied)",
)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def backup_command(
    data_dir: Path | None, db: str | None, blockstore: str | None, out: Path
) -> None:
    """Copy the data into OUT (a new or empty directory), laid out as a data directory:
    OUT/parsec.sqlite and OUT/blocks. Restore: stop the server, then run it with
    `--data-dir OUT` (or move OUT's files back in place)."""
    database, blocks = _sources(data_dir, db, blockstore)
    # The progress bar only on a terminal (disable=None), never in a log.
    with tqdm(desc="Block files", unit=" files", disable=True if blocks is None else None) as bar:
        try:
            report = backup(database, blocks, out, on_block_file=lambda: bar.update())
        except (BackupError, OSError, ValueError, sqlite3.Error) as exc:
            raise click.ClickException(_one_line(exc)) from None
    click.echo(f"Database {database} copied to {out / database_path(out).name}")
    if blocks is not None:
        click.echo(
            f"{report.blocks_copied} block files copied from {blocks}; the "
            f"{report.blocks_checked} blocks of the database are all in the copy"
        )


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return " ".join(str(exc).split()) or type(exc).__name__
