"""Readiness of the main database: a pooled connection answers, and every migration this
version of the server knows is applied (`parsec backend migrate` was run).

A database migrated further by a newer version stays ready (reported as `newer_schema`):
during a rolling upgrade the migrations of the new version are applied while the servers
of the previous one still run (docs/deployment.md), and marking them all not ready at
that moment would leave the load balancer without any server. A server does refuse to
*start* on such a database.
"""

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
    get_last_applied_migration,
    load_migrations,
)


class PostgreSQLDatabaseProbe(ReadinessProbe):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._known = max((migration.idx for migration in load_migrations()), default=0)

    async def check_ready(self, within: float) -> CheckOutcome:
        # Through the pool, as the commands: a pool exhausted for `within` seconds is not
        # ready either.
        try:
            async with asyncio.timeout(within), self._pool.acquire() as conn:
                last_applied = await get_last_applied_migration(conn)
        except Exception as exc:
            return exception_outcome(exc)
        if last_applied < self._known:
            return failed(
                "migrations not applied: run `parsec backend migrate`",
                last_applied_migration=last_applied,
                latest_known_migration=self._known,
            )
        if last_applied > self._known:
            return CheckOutcome(True, {"newer_schema": True})
        return CheckOutcome(True)
