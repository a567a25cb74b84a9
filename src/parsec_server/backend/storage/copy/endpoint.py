"""One side of a copy: a database read or written in batches of rows.

Rows travel between the two sides as the SQLite schema stores them (storage/sqlite/utils):
UUIDs as their 16 bytes, timestamps as integer microseconds since the epoch (UTC),
booleans as 0 or 1; text, integers, bytes and NULL as they are. The PostgreSQL side
converts from and to its own types, so that any side can be copied to any other, and
checksums are computed on the same values on both sides.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

Row = tuple[Any, ...]  # in the order of the columns asked for
Key = tuple[Any, ...]  # the values of a table's key columns


class CopyError(Exception):
    """What stops a copy, in one line for the operator."""


def quoted(name: str) -> str:
    """An identifier as both SQL dialects read it (`index` is a keyword)."""
    return '"' + name.replace('"', '""') + '"'


def key_after(key: Sequence[str], first_parameter: int, placeholder: str) -> str:
    """`(k1, k2) > (p1, p2)`: the rows after a key, in key order (row values: both)."""
    columns = ", ".join(map(quoted, key))
    parameters = ", ".join(placeholder.format(first_parameter + index) for index in range(len(key)))
    return f"({columns}) > ({parameters})"


class Endpoint(ABC):
    """A migrated database of the current schema, for the copy."""

    description: str  # for the operator: never a password

    @abstractmethod
    async def table_columns(self) -> dict[str, list[str]]:
        """Every table and its columns, `NOT_COPIED` ones included."""

    @abstractmethod
    async def count(self, table: str) -> int: ...

    @abstractmethod
    async def fetch(
        self, table: str, columns: Sequence[str], key: Sequence[str], after: Key | None, limit: int
    ) -> list[Row]:
        """Up to `limit` rows after the key `after` (from the first if None), in key
        order; the key columns must be among `columns`."""

    @abstractmethod
    async def existing_keys(
        self, table: str, key: Sequence[str], first: Key, last: Key
    ) -> set[Key]:
        """The keys of the rows between `first` and `last` included."""

    @abstractmethod
    async def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        """The rows, in one transaction."""

    @abstractmethod
    async def update(
        self, table: str, key: Sequence[str], columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        """Sets `columns` of the rows whose key is given: each row is the key's values,
        then the columns' values; one transaction."""

    @abstractmethod
    async def finish(self) -> None:
        """After every row is in (PostgreSQL: each table's `_id` sequence after its rows)."""

    @abstractmethod
    async def close(self) -> None: ...
