"""A SQLite database as one side of a copy: one connection, each batch one call in a
thread (the copy's progress display keeps running)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from parsec_server.backend.storage.copy.endpoint import (
    CopyError,
    Endpoint,
    Key,
    Row,
    key_after,
    quoted,
)

T = TypeVar("T")

_SQL_TABLES = "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"


class SQLiteEndpoint(Endpoint):
    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.description = f"sqlite:{path}"
        self._conn = conn

    @classmethod
    async def open_source(cls, path: Path) -> SQLiteEndpoint:
        """Read only; CopyError if missing or not migrated to this version."""
        from parsec_server.backend.storage.sqlite.migrations import check_migrations_applied

        def open_checked() -> sqlite3.Connection:
            if not path.is_file():
                raise CopyError(f"SQLite database {path} does not exist")
            # Used by one thread at a time, not always the one that opened it.
            conn = sqlite3.connect(
                f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False
            )
            try:
                problem = check_migrations_applied(conn, path)
            except BaseException:
                conn.close()
                raise
            if problem is not None:
                conn.close()
                raise CopyError(problem)
            return conn

        return cls(path, await asyncio.to_thread(open_checked))

    @classmethod
    async def open_target(cls, path: Path) -> SQLiteEndpoint:
        """Created if missing, migrated to this version."""
        from parsec_server.backend.storage.sqlite.database import connect
        from parsec_server.backend.storage.sqlite.migrations import (
            MigrationStatus,
            migrate_file,
        )

        def open_migrated() -> sqlite3.Connection:
            outcomes = migrate_file(path)
            failed = [o for o in outcomes if o.status is MigrationStatus.FAILED]
            if failed:
                raise CopyError(f"Cannot migrate {path}: {failed[0].line}")
            return connect(path)

        return cls(path, await asyncio.to_thread(open_migrated))

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(job, self._conn)

    async def table_columns(self) -> dict[str, list[str]]:
        def job(conn: sqlite3.Connection) -> dict[str, list[str]]:
            tables = [name for (name,) in conn.execute(_SQL_TABLES)]
            return {
                table: [row[1] for row in conn.execute(f"PRAGMA table_info({quoted(table)})")]
                for table in tables
            }

        return await self._run(job)

    async def count(self, table: str) -> int:
        def job(conn: sqlite3.Connection) -> int:
            value: int = conn.execute(f"SELECT count(*) FROM {quoted(table)}").fetchone()[0]
            return value

        return await self._run(job)

    async def fetch(
        self, table: str, columns: Sequence[str], key: Sequence[str], after: Key | None, limit: int
    ) -> list[Row]:
        where = "" if after is None else f"WHERE {key_after(key, 1, '?{}')}"
        sql = (
            f"SELECT {', '.join(map(quoted, columns))} FROM {quoted(table)} {where} "
            f"ORDER BY {', '.join(map(quoted, key))} LIMIT {int(limit)}"
        )
        parameters = () if after is None else tuple(after)

        def job(conn: sqlite3.Connection) -> list[Row]:
            return [tuple(row) for row in conn.execute(sql, parameters)]

        return await self._run(job)

    async def existing_keys(
        self, table: str, key: Sequence[str], first: Key, last: Key
    ) -> set[Key]:
        columns = ", ".join(map(quoted, key))
        placeholders = ", ".join("?" for _ in key)
        sql = (
            f"SELECT {columns} FROM {quoted(table)} "
            f"WHERE ({columns}) >= ({placeholders}) AND ({columns}) <= ({placeholders})"
        )

        def job(conn: sqlite3.Connection) -> set[Key]:
            return {tuple(row) for row in conn.execute(sql, (*first, *last))}

        return await self._run(job)

    async def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        sql = (
            f"INSERT INTO {quoted(table)} ({', '.join(map(quoted, columns))}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        await self._run(lambda conn: _in_transaction(conn, sql, rows))

    async def update(
        self, table: str, key: Sequence[str], columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        assignments = ", ".join(f"{quoted(column)} = ?" for column in columns)
        condition = " AND ".join(f"{quoted(column)} = ?" for column in key)
        sql = f"UPDATE {quoted(table)} SET {assignments} WHERE {condition}"
        # Placeholders are numbered in the statement's order: the values, then the key.
        reordered = [(*row[len(key) :], *row[: len(key)]) for row in rows]
        await self._run(lambda conn: _in_transaction(conn, sql, reordered))

    async def finish(self) -> None:
        """Nothing: a rowid continues after the table's highest."""

    async def close(self) -> None:
        await asyncio.to_thread(self._conn.close)


def _in_transaction(conn: sqlite3.Connection, sql: str, rows: Sequence[Row]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
