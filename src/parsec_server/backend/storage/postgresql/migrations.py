"""Entry points of the PostgreSQL schema management; the details are in `schema/`.

The layout is Parsec 2.0.0's (`migrations/0001..0005`), plus our extras
(`migrations/extras/`, objects named `ext_*`, recorded in `ext_migration`). `migrate`
also takes over a Parsec 2.0.0 database at any level and converts the layout of our
earlier releases (`migrations/legacy/`); `downgrade` hands the database back.
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.storage.postgresql.schema.classify import SchemaError
from parsec_server.backend.storage.postgresql.schema.files import Migration, Series, load_series
from parsec_server.backend.storage.postgresql.schema.runner import (
    MIGRATION_LOCK_KEY,
    Report,
    downgrade,
    migrate,
)
from parsec_server.backend.storage.postgresql.schema.startup import (
    SchemaLevels,
    read_schema_levels,
)

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "Report",
    "SchemaError",
    "SchemaLevels",
    "Series",
    "check_migrations_applied",
    "downgrade",
    "load_series",
    "migrate",
    "read_schema_levels",
]


async def check_migrations_applied(conn: asyncpg.Connection) -> str | None:
    """Why the server must not start on this database (naming the fix), or None."""
    return (await read_schema_levels(conn)).problem()
