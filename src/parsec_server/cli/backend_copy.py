"""`parsec backend copy`: every table and block of one storage into another, e.g. from a
data directory to PostgreSQL and S3 (backend/storage/copy/, docs/data-dir.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.blockstore.base import BlockStore
from parsec_server.backend.blockstore.factory import blockstore_factory
from parsec_server.backend.config import SQLITE_PREFIX, BlockstoreConfig, StartupError
from parsec_server.backend.data_dir import blocks_path, database_path, prepare_data_dir
from parsec_server.backend.storage.copy.endpoint import CopyError, Endpoint
from parsec_server.backend.storage.copy.postgresql_endpoint import PostgreSQLEndpoint
from parsec_server.backend.storage.copy.run import (
    Progress,
    check_blocks,
    check_tables,
    columns_of,
    copy_blocks,
    copy_tables,
    is_empty,
)
from parsec_server.backend.storage.copy.sqlite_endpoint import SQLiteEndpoint
from parsec_server.cli.blockstore_params import check_blockstore_usable, parse_blockstore_params
from parsec_server.cli.db_params import sqlite_path_of


@dataclass(frozen=True, slots=True)
class Side:
    db_url: str  # `sqlite:<absolute path>` or a PostgreSQL URL
    blockstore: BlockstoreConfig
    data_dir: Path | None = None  # a target data directory is initialised first


def _side(which: str, data_dir: Path | None, db: str | None, blockstore: Sequence[str]) -> Side:
    if data_dir is not None:
        if db or blockstore:
            raise click.UsageError(
                f"--{which}-data-dir sets --{which}-db and --{which}-blockstore: give either"
            )
        return Side(
            f"{SQLITE_PREFIX}{database_path(data_dir)}",
            parse_blockstore_params([f"file:{blocks_path(data_dir)}"]),
            data_dir,
        )
    if not db or not blockstore:
        raise click.UsageError(f"Give --{which}-data-dir, or --{which}-db and --{which}-blockstore")
    if db.startswith(SQLITE_PREFIX):
        db = f"{SQLITE_PREFIX}{sqlite_path_of(db)}"
    elif not db.startswith(("postgresql://", "postgres://")):
        raise click.UsageError(f"--{which}-db must be `sqlite:PATH` or a `postgresql://` URL")
    config = parse_blockstore_params(blockstore)
    if config.type_name == "MOCKED":
        raise click.UsageError(f"--{which}-blockstore MOCKED holds nothing to copy")
    try:
        check_blockstore_usable(config, db)
    except StartupError as exc:
        raise click.UsageError(str(exc)) from None
    return Side(db, config)


async def _open_endpoint(side: Side, *, target: bool) -> Endpoint:
    if side.db_url.startswith(SQLITE_PREFIX):
        path = Path(side.db_url.removeprefix(SQLITE_PREFIX))
        if not target:
            return await SQLiteEndpoint.open_source(path)
        if side.data_dir is not None:
            await asyncio.to_thread(prepare_data_dir, side.data_dir)
        return await SQLiteEndpoint.open_target(path)
    return await PostgreSQLEndpoint.open(side.db_url, migrate=target)


@contextlib.asynccontextmanager
async def _storage(side: Side, *, target: bool) -> AsyncIterator[tuple[Endpoint, BlockStore]]:
    endpoint = await _open_endpoint(side, target=target)
    try:
        pool = endpoint.pool if isinstance(endpoint, PostgreSQLEndpoint) else None
        async with blockstore_factory(side.blockstore, pool) as store:
            yield endpoint, store
    finally:
        await endpoint.close()


class _Bar:
    def __init__(self, description: str, total: int) -> None:
        # On a terminal only (disable=None): never in a log.
        self._bar = tqdm(desc=description, total=total, disable=None, leave=True)

    def advance(self, count: int) -> None:
        self._bar.update(count)

    def close(self) -> None:
        self._bar.close()


class _Bars:
    """Progress bars on the terminal, one per stage (each table, the blocks, the checks)."""

    def stage(self, description: str, total: int) -> _Bar:
        return _Bar(description, total)


async def _copy(source_side: Side, target_side: Side, resume: bool, progress: Progress) -> bool:
    async with (
        _storage(source_side, target=False) as (source, source_store),
        _storage(target_side, target=True) as (target, target_store),
    ):
        columns = await columns_of(source, target)
        if not resume and not await is_empty(target):
            raise CopyError(
                f"{target.description} is not empty: give --resume to go on with an "
                "interrupted copy into it"
            )
        click.echo(f"Copying {source.description} to {target.description}")
        tables = await copy_tables(source, target, columns, progress)
        blocks = await copy_blocks(source, source_store, target_store, progress)
        differing_tables = await check_tables(source, target, columns, tables, progress)
        differing_blocks = await check_blocks(source, source_store, target_store, blocks, progress)
    for report in tables:
        click.echo(
            f"{report.name}: {report.copied + report.present} rows ({report.copied} copied, "
            f"{report.present} already there)"
        )
    click.echo(
        f"blocks: {blocks.copied + blocks.present} ({blocks.copied} copied, "
        f"{blocks.present} already there)"
    )
    ok = not (differing_tables or differing_blocks or blocks.missing_in_source)
    if differing_tables:
        click.echo(f"Tables that differ: {', '.join(differing_tables)}", err=True)
    if differing_blocks:
        click.echo(f"{len(differing_blocks)} block(s) differ, e.g. {differing_blocks[0]}", err=True)
    if blocks.missing_in_source:
        click.echo(
            f"{len(blocks.missing_in_source)} block(s) of the source database are missing "
            f"from the source blockstore, e.g. {blocks.missing_in_source[0]}",
            err=True,
        )
    if ok:
        click.echo(
            f"Checked: every row of the {len(tables)} tables and every one of the "
            f"{blocks.checked} blocks is the same in the target (counts and SHA-256)"
        )
    return ok


@click.command(short_help="Copy all the data from one storage to another")
@click.option("--from-data-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--from-db", metavar="URL", help="`sqlite:PATH` or a `postgresql://` URL")
@click.option("--from-blockstore", multiple=True, help="As `parsec backend run --blockstore`")
@click.option("--to-data-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--to-db", metavar="URL", help="`sqlite:PATH` or a `postgresql://` URL")
@click.option("--to-blockstore", multiple=True, help="As `parsec backend run --blockstore`")
@click.option(
    "--resume",
    is_flag=True,
    help="Go on with an interrupted copy: the target is not empty, what it has is kept",
)
def copy(
    from_data_dir: Path | None,
    from_db: str | None,
    from_blockstore: tuple[str, ...],
    to_data_dir: Path | None,
    to_db: str | None,
    to_blockstore: tuple[str, ...],
    resume: bool,
) -> None:
    """Copy every table and block of the source storage into the target one (migrated
    first, and empty unless --resume), then check both hold the same (row counts and
    checksums, block checksums). Stop the source server first. Run it again after an
    interruption, with --resume: nothing is copied twice."""
    source = _side("from", from_data_dir, from_db, from_blockstore)
    target = _side("to", to_data_dir, to_db, to_blockstore)
    if source.db_url == target.db_url:
        raise click.UsageError("The source and the target are the same database")
    try:
        ok = asyncio.run(_copy(source, target, resume, _Bars()))
    except (CopyError, StartupError) as exc:
        raise click.ClickException(str(exc)) from None
    if not ok:
        raise click.ClickException("The target differs from the source (see above)")
