"""A PostgreSQL database as one side of a copy, its values converted from and to the
copy's (endpoint.py): a column's type is the one PostgreSQL gives each parameter of the
prepared statement."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.storage.copy.endpoint import (
    CopyError,
    Endpoint,
    Key,
    Row,
    key_after,
    quoted,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_SQL_TABLES = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position
"""
_SQL_SEQUENCE = "SELECT pg_get_serial_sequence($1, '_id')"


def to_copy_value(value: Any) -> Any:
    """A value as asyncpg decodes it, as the copy carries it."""
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MICROSECOND
    if isinstance(value, bool):
        return int(value)
    return value


def _from_uuid(value: Any) -> Any:
    return value if value is None else uuid.UUID(bytes=value)


def _from_timestamp(value: Any) -> Any:
    return value if value is None else _EPOCH + timedelta(microseconds=value)


def _from_boolean(value: Any) -> Any:
    return value if value is None else bool(value)


def _same(value: Any) -> Any:
    return value


_FROM_COPY_VALUE: dict[str, Callable[[Any], Any]] = {
    "uuid": _from_uuid,
    "timestamptz": _from_timestamp,
    "bool": _from_boolean,
}


def describe_url(url: str) -> str:
    """`postgresql://user@host:port/database`, without the password."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{parts.path}"


class PostgreSQLEndpoint(Endpoint):
    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.description = describe_url(url)
        self.pool = pool  # also that of a `POSTGRESQL` blockstore of this database

    @classmethod
    async def open(cls, url: str, *, migrate: bool) -> PostgreSQLEndpoint:
        """The target is migrated first; the source must be of this version (CopyError)."""
        from parsec_server.backend.storage.postgresql.migrations import (
            SchemaError,
            check_migrations_applied,
        )
        from parsec_server.backend.storage.postgresql.migrations import (
            migrate as migrate_schema,
        )

        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        except (OSError, asyncpg.PostgresError) as exc:
            raise CopyError(f"Cannot connect to {describe_url(url)}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                if migrate:
                    try:
                        await migrate_schema(conn)
                    except SchemaError as exc:
                        raise CopyError(f"Cannot migrate {describe_url(url)}: {exc}") from exc
                problem = await check_migrations_applied(conn)
                if problem is not None:
                    raise CopyError(f"{describe_url(url)}: {problem}")
        except BaseException:
            await pool.close()
            raise
        return cls(url, pool)

    async def table_columns(self) -> dict[str, list[str]]:
        tables: dict[str, list[str]] = {}
        for table, column in await self.pool.fetch(_SQL_TABLES):
            tables.setdefault(table, []).append(column)
        return tables

    async def count(self, table: str) -> int:
        value: int = await self.pool.fetchval(f"SELECT count(*) FROM {quoted(table)}")
        return value

    async def fetch(
        self, table: str, columns: Sequence[str], key: Sequence[str], after: Key | None, limit: int
    ) -> list[Row]:
        where = "" if after is None else f"WHERE {key_after(key, 1, '${}')}"
        sql = (
            f"SELECT {', '.join(map(quoted, columns))} FROM {quoted(table)} {where} "
            f"ORDER BY {', '.join(map(quoted, key))} LIMIT {int(limit)}"
        )
        async with self.pool.acquire() as conn:
            statement = await conn.prepare(sql)
            parameters = [] if after is None else _converter(statement)(after)
            records = await statement.fetch(*parameters)
        return [tuple(to_copy_value(value) for value in record) for record in records]

    async def existing_keys(
        self, table: str, key: Sequence[str], first: Key, last: Key
    ) -> set[Key]:
        columns = ", ".join(map(quoted, key))
        low = ", ".join(f"${index + 1}" for index in range(len(key)))
        high = ", ".join(f"${index + 1 + len(key)}" for index in range(len(key)))
        sql = (
            f"SELECT {columns} FROM {quoted(table)} "
            f"WHERE ({columns}) >= ({low}) AND ({columns}) <= ({high})"
        )
        async with self.pool.acquire() as conn:
            statement = await conn.prepare(sql)
            records = await statement.fetch(*_converter(statement)((*first, *last)))
        return {tuple(to_copy_value(value) for value in record) for record in records}

    async def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        sql = (
            f"INSERT INTO {quoted(table)} ({', '.join(map(quoted, columns))}) "
            f"VALUES ({', '.join(f'${index + 1}' for index in range(len(columns)))})"
        )
        await self._execute_many(sql, rows)

    async def update(
        self, table: str, key: Sequence[str], columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        condition = " AND ".join(
            f"{quoted(column)} = ${index + 1}" for index, column in enumerate(key)
        )
        assignments = ", ".join(
            f"{quoted(column)} = ${index + 1 + len(key)}" for index, column in enumerate(columns)
        )
        await self._execute_many(
            f"UPDATE {quoted(table)} SET {assignments} WHERE {condition}", rows
        )

    async def _execute_many(self, sql: str, rows: Sequence[Row]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            statement = await conn.prepare(sql)
            convert = _converter(statement)
            await statement.executemany([convert(row) for row in rows])

    async def finish(self) -> None:
        """Each `_id` sequence continues after the copied rows."""
        for table, columns in (await self.table_columns()).items():
            if "_id" not in columns:
                continue
            sequence = await self.pool.fetchval(_SQL_SEQUENCE, quoted(table))
            if sequence is not None:
                await self.pool.execute(
                    f"SELECT setval($1, max(_id)) FROM {quoted(table)} HAVING count(*) > 0",
                    sequence,
                )

    async def close(self) -> None:
        await self.pool.close()


def _converter(statement: Any) -> Callable[[Sequence[Any]], list[Any]]:
    """Copy values into the types of the statement's parameters, in order."""
    functions = [
        _FROM_COPY_VALUE.get(parameter.name, _same) for parameter in statement.get_parameters()
    ]

    def convert(values: Sequence[Any]) -> list[Any]:
        return [function(value) for function, value in zip(functions, values, strict=True)]

    return convert
