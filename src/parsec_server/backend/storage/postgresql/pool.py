"""The connection pool: created at start-up, with retries, on a migrated database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import structlog

from parsec_server.backend.config import BackendConfig, StartupError
from parsec_server.backend.metrics import PoolStats
from parsec_server.backend.storage.postgresql.migrations import check_migrations_applied
from parsec_server.backend.storage.postgresql.schema.activity import SERVER_APPLICATION_NAME

logger = structlog.get_logger("parsec.postgresql")

CONNECT_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)
# Seconds the pool has to close its connections cleanly at shutdown (the commands using
# them are over by then); past that they are dropped.
POOL_CLOSE_TIMEOUT = 3.0


async def connect_with_retries(
    config: BackendConfig, application_name: str | None = None
) -> asyncpg.Connection:
    """One connection, trying `db_first_tries_number` times (0: forever)."""
    settings = {} if application_name is None else {"application_name": application_name}
    attempt = 0
    while True:
        attempt += 1
        try:
            return await asyncpg.connect(
                config.db_url, timeout=30, server_settings=settings or None
            )
        except CONNECT_ERRORS as exc:
            if config.db_first_tries_number and attempt >= config.db_first_tries_number:
                raise StartupError(f"Cannot connect to the database: {exc}") from exc
            logger.warning("database not reachable yet", attempt=attempt, error=str(exc))
            await asyncio.sleep(config.db_first_tries_sleep)


@contextlib.asynccontextmanager
async def postgresql_pool(config: BackendConfig) -> AsyncIterator[asyncpg.Pool]:
    first = await connect_with_retries(config, SERVER_APPLICATION_NAME)
    try:
        problem = await check_migrations_applied(first)
    finally:
        await first.close()
    if problem is not None:
        raise StartupError(problem)
    try:
        pool = await asyncpg.create_pool(
            config.db_url,
            min_size=config.db_min_connections,
            max_size=config.db_max_connections,
            # How `migrate` and `downgrade` tell a running server of ours
            server_settings={"application_name": SERVER_APPLICATION_NAME},
        )
    except CONNECT_ERRORS as exc:
        raise StartupError(f"Cannot connect to the database: {exc}") from exc
    try:
        yield pool
    finally:
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT)
        except TimeoutError:
            logger.warning("database connections not closed in time, dropped")
            pool.terminate()


def pool_stats(pool: asyncpg.Pool) -> PoolStats:
    """The pool right now, for the monitoring (a few attribute reads: `max_size` holders).
    The waiting acquisitions are the futures parked in the pool's queue of free
    connections (asyncpg has no public counter for them)."""
    size: int = pool.get_size()
    idle: int = pool.get_idle_size()
    getters = getattr(getattr(pool, "_queue", None), "_getters", ())
    waiting = sum(1 for getter in getters if not getter.done())
    return PoolStats(in_use=size - idle, idle=idle, waiting=waiting, max_size=pool.get_max_size())
