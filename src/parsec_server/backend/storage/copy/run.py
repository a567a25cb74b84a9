"""The copy itself: tables, then blocks, then the checks.

* Tables in `TABLES` order, each read in key order by batches; a batch inserts the rows
  whose key the target lacks (so a copy interrupted at any point is resumed by running it
  again: nothing is duplicated), in one transaction. `_id`s are kept, so references stay
  right. The deferred columns are set last, for every row that has them.
* Blocks: every block of the source's `block` table, through the blockstores'
  interface: read from the source and created in the target unless the target has it
  (a store's create is atomic: a block present is complete).
* Checks: per table, the number of rows and a SHA-256 of all of them on each side; per
  block, a SHA-256 of its data on each side.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.storage.copy.endpoint import CopyError, Endpoint, Key, Row
from parsec_server.backend.storage.copy.tables import NOT_COPIED, TABLES, Table

BATCH_ROWS = 500
BLOCK_CONCURRENCY = 8  # blocks in flight at once (each store bounds its own calls)


class ProgressStage(Protocol):
    def advance(self, count: int) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    def stage(self, description: str, total: int) -> ProgressStage: ...


class _Silent:
    def stage(self, description: str, total: int) -> _Silent:
        return self

    def advance(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


SILENT: Progress = _Silent()


@dataclass
class TableReport:
    name: str
    copied: int = 0
    present: int = 0  # already in the target (a resumed copy)
    checked: bool = False


@dataclass
class BlockReport:
    copied: int = 0
    present: int = 0
    checked: int = 0
    missing_in_source: list[str] = field(default_factory=list)


async def columns_of(source: Endpoint, target: Endpoint) -> dict[str, list[str]]:
    """The columns of each copied table; CopyError if the two schemas differ or hold a
    table the copy does not know."""
    source_tables = await source.table_columns()
    target_tables = await target.table_columns()
    known = {table.name for table in TABLES} | NOT_COPIED
    for side, tables in ((source, source_tables), (target, target_tables)):
        unknown = sorted(set(tables) - known)
        if unknown:
            raise CopyError(f"{side.description} has tables the copy does not know: {unknown}")
    columns: dict[str, list[str]] = {}
    for table in TABLES:
        theirs, ours = source_tables.get(table.name), target_tables.get(table.name)
        if theirs is None or ours is None or sorted(theirs) != sorted(ours):
            raise CopyError(
                f"Table {table.name} differs between {source.description} and "
                f"{target.description}: {theirs} / {ours}"
            )
        columns[table.name] = theirs
    return columns


async def is_empty(endpoint: Endpoint) -> bool:
    for table in TABLES:
        if await endpoint.count(table.name):
            return False
    return True


async def _batches(
    endpoint: Endpoint, table: Table, columns: Sequence[str], batch_rows: int
) -> AsyncIterator[list[Row]]:
    key_positions = [columns.index(column) for column in table.key]
    after: Key | None = None
    while True:
        rows = await endpoint.fetch(table.name, columns, table.key, after, batch_rows)
        if not rows:
            return
        yield rows
        after = tuple(rows[-1][position] for position in key_positions)


async def copy_tables(
    source: Endpoint,
    target: Endpoint,
    columns: dict[str, list[str]],
    progress: Progress = SILENT,
    batch_rows: int = BATCH_ROWS,
) -> list[TableReport]:
    reports = []
    for table in TABLES:
        report = TableReport(table.name)
        reports.append(report)
        table_columns = columns[table.name]
        key_positions = [table_columns.index(column) for column in table.key]
        deferred = {table_columns.index(column) for column in table.deferred}
        stage = progress.stage(table.name, await source.count(table.name))
        try:
            async for rows in _batches(source, table, table_columns, batch_rows):
                keys = [tuple(row[position] for position in key_positions) for row in rows]
                present = await target.existing_keys(table.name, table.key, keys[0], keys[-1])
                missing = [
                    tuple(None if index in deferred else value for index, value in enumerate(row))
                    for row, key in zip(rows, keys, strict=True)
                    if key not in present
                ]
                if missing:
                    await target.insert(table.name, table_columns, missing)
                report.copied += len(missing)
                report.present += len(rows) - len(missing)
                stage.advance(len(rows))
        finally:
            stage.close()
    for table in TABLES:
        if table.deferred:
            await _set_deferred(source, target, table, batch_rows)
    await target.finish()
    return reports


async def _set_deferred(source: Endpoint, target: Endpoint, table: Table, batch_rows: int) -> None:
    columns = [*table.key, *table.deferred]
    async for rows in _batches(source, table, columns, batch_rows):
        referring = [
            row for row in rows if any(value is not None for value in row[len(table.key) :])
        ]
        if referring:
            await target.update(table.name, table.key, table.deferred, referring)


async def _table_digest(
    endpoint: Endpoint, table: Table, columns: Sequence[str], batch_rows: int
) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    async for rows in _batches(endpoint, table, columns, batch_rows):
        for row in rows:
            digest.update(repr(row).encode())
        count += len(rows)
    return count, digest.hexdigest()


async def check_tables(
    source: Endpoint,
    target: Endpoint,
    columns: dict[str, list[str]],
    reports: Sequence[TableReport],
    progress: Progress = SILENT,
    batch_rows: int = BATCH_ROWS,
) -> list[str]:
    """The tables whose rows differ (count or checksum)."""
    differing = []
    stage = progress.stage("checking tables", len(TABLES))
    try:
        for table, report in zip(TABLES, reports, strict=True):
            # Same column order on both sides: the source's.
            ordered = sorted(columns[table.name])
            theirs = await _table_digest(source, table, ordered, batch_rows)
            ours = await _table_digest(target, table, ordered, batch_rows)
            report.checked = theirs == ours
            if not report.checked:
                differing.append(
                    f"{table.name} ({theirs[0]} rows in the source, {ours[0]} in the target)"
                )
            stage.advance(1)
    finally:
        stage.close()
    return differing


async def _block_keys(
    source: Endpoint, batch_rows: int
) -> AsyncIterator[list[tuple[str, uuid.UUID]]]:
    organizations: dict[int, str] = {}
    async for rows in _batches(
        source, Table("organization"), ["_id", "organization_id"], batch_rows
    ):
        organizations.update((row[0], row[1]) for row in rows)
    async for rows in _batches(
        source, Table("block"), ["_id", "organization", "block_id"], batch_rows
    ):
        yield [(organizations[row[1]], uuid.UUID(bytes=row[2])) for row in rows]


async def _for_each_block(
    source: Endpoint,
    description: str,
    action: Callable[[str, uuid.UUID], Awaitable[None]],
    progress: Progress,
    batch_rows: int,
) -> None:
    stage = progress.stage(description, await source.count("block"))
    semaphore = asyncio.Semaphore(BLOCK_CONCURRENCY)

    async def one(organization_id: str, block_id: uuid.UUID) -> None:
        async with semaphore:
            await action(organization_id, block_id)
            stage.advance(1)

    try:
        async for keys in _block_keys(source, batch_rows):
            async with asyncio.TaskGroup() as group:
                for organization_id, block_id in keys:
                    group.create_task(one(organization_id, block_id))
    except* CopyError as errors:
        raise errors.exceptions[0] from None
    finally:
        stage.close()


async def copy_blocks(
    source: Endpoint,
    source_store: BlockStore,
    target_store: BlockStore,
    progress: Progress = SILENT,
    batch_rows: int = BATCH_ROWS,
) -> BlockReport:
    report = BlockReport()

    async def copy_one(organization_id: str, block_id: uuid.UUID) -> None:
        name = f"{organization_id}/{block_id}"
        present = await target_store.read(organization_id, block_id)
        if isinstance(present, bytes):
            report.present += 1
            return
        if present is BlockStoreBadOutcome.UNAVAILABLE:
            raise CopyError(f"The target blockstore failed to read block {name}")
        data = await source_store.read(organization_id, block_id)
        if data is BlockStoreBadOutcome.NOT_FOUND:
            report.missing_in_source.append(name)
            return
        if isinstance(data, BlockStoreBadOutcome):
            raise CopyError(f"The source blockstore failed to read block {name}")
        if await target_store.create(organization_id, block_id, data) is not None:
            raise CopyError(f"The target blockstore failed to store block {name}")
        report.copied += 1

    await _for_each_block(source, "blocks", copy_one, progress, batch_rows)
    return report


def _checksum(data: bytes | BlockStoreBadOutcome) -> bytes | None:
    return hashlib.sha256(data).digest() if isinstance(data, bytes) else None


async def check_blocks(
    source: Endpoint,
    source_store: BlockStore,
    target_store: BlockStore,
    report: BlockReport,
    progress: Progress = SILENT,
    batch_rows: int = BATCH_ROWS,
) -> list[str]:
    """The blocks whose data differs between the stores (missing in the target included;
    those missing in the source are already reported)."""
    differing: list[str] = []
    lost = set(report.missing_in_source)

    async def check_one(organization_id: str, block_id: uuid.UUID) -> None:
        name = f"{organization_id}/{block_id}"
        if name in lost:
            return
        theirs, ours = await asyncio.gather(
            source_store.read(organization_id, block_id),
            target_store.read(organization_id, block_id),
        )
        if _checksum(theirs) is None or _checksum(theirs) != _checksum(ours):
            differing.append(name)
        else:
            report.checked += 1

    await _for_each_block(source, "checking blocks", check_one, progress, batch_rows)
    return differing
