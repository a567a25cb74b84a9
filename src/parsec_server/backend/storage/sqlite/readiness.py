"""Readiness of the SQLite database: the writer thread answers (it is not stuck behind a
lock or a slow disk) and the schema is the one this server knows."""

from __future__ import annotations

import asyncio

from parsec_server.backend.readiness import (
    CheckOutcome,
    ReadinessProbe,
    exception_outcome,
    failed,
)
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.migrations import (
    get_last_applied_migration,
    load_migrations,
)


class SQLiteDatabaseProbe(ReadinessProbe):
    def __init__(self, database: SQLiteDatabase) -> None:
        self._db = database
        self._known = max((migration.idx for migration in load_migrations()), default=0)

    async def check_ready(self, within: float) -> CheckOutcome:
        try:
            async with asyncio.timeout(within):
                last_applied = await self._db.on_writer(get_last_applied_migration)
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
