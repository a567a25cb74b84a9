"""Readiness of the main database: a pooled connection answers, and the schema is the one
this version of the server expects (`parsec backend migrate` was run, and no newer
version migrated it further)."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.readiness import (
    CheckOutcome,
    ReadinessProbe,
    exception_outcome,
    failed,
)
from parsec_server.backend.storage.postgresql.migrations import (
    check_migrations_applied,
    load_migrations,
)


class PostgreSQLDatabaseProbe(ReadinessProbe):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._migrations = load_migrations()

    async def check_ready(self, within: float) -> CheckOutcome:
        # Through the pool, as the commands: a pool exhausted for `within` seconds is
        # not ready either.
        try:
            async with asyncio.timeout(within), self._pool.acquire() as conn:
                problem = await check_migrations_applied(conn, self._migrations)
        except Exception as exc:
            return exception_outcome(exc)
        if problem is not None:
            return failed(problem)  # our own text, naming migration files only
        return CheckOutcome(True)
