"""Readiness of the main database: a pooled connection answers, and the schema is the
one this version of the server runs on (Parsec 2.0.0's layout at its last level, plus
every extras migration this version knows).

A database whose extras were migrated further by a newer version stays ready (reported
as `newer_schema`): during a rolling upgrade the migrations of the new version are
applied while the servers of the previous one still run (docs/deployment.md), and
marking them all not ready at that moment would leave the load balancer without any
server. A server does refuse to *start* on such a database.
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
from parsec_server.backend.storage.postgresql.schema.startup import read_schema_levels


class PostgreSQLDatabaseProbe(ReadinessProbe):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def check_ready(self, within: float) -> CheckOutcome:
        # Through the pool, as the commands: a pool exhausted for `within` seconds is not
        # ready either.
        try:
            async with asyncio.timeout(within), self._pool.acquire() as conn:
                levels = await read_schema_levels(conn)
        except Exception as exc:
            return exception_outcome(exc)
        if levels.newer_extras():
            return CheckOutcome(True, {"newer_schema": True})
        problem = levels.problem()
        if problem is not None:
            return failed(problem, level=levels.level, extras_level=levels.extras_level)
        return CheckOutcome(True)
