"""Who else is connected to the database: a server running on it (ours or Parsec
2.0.0) must be stopped before its schema changes under it."""

from __future__ import annotations

import asyncio
import time

import asyncpg  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "SERVER_APPLICATION_NAME",
    "TOOL_APPLICATION_NAME",
    "in_use_message",
    "other_sessions",
]

# How our connections show in pg_stat_activity: the server's pool ...
SERVER_APPLICATION_NAME = "parsec-server"
# ... and `migrate` / `downgrade`, which wait for each other on the migration lock
# instead of counting as users of the database.
TOOL_APPLICATION_NAME = "parsec-server migrate"

# A client that just closed its connection may show for a few milliseconds more (its
# backend is exiting): look again for that long before calling the database in use.
_SETTLE_SECONDS = 1.0
_SETTLE_POLL_SECONDS = 0.05

_SQL_OTHER_SESSIONS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
    AND backend_type = 'client backend'
    AND application_name IS DISTINCT FROM $1
"""


async def other_sessions(conn: asyncpg.Connection) -> int:
    """How many other clients (ours or not, except our migration tools) are connected
    to this database."""
    deadline = time.monotonic() + _SETTLE_SECONDS
    while True:
        # pg_stat_activity is a snapshot taken once per transaction: read it afresh.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        count: int = await conn.fetchval(_SQL_OTHER_SESSIONS, TOOL_APPLICATION_NAME)
        if count == 0 or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(_SETTLE_POLL_SECONDS)


def in_use_message(count: int) -> str:
    return (
        f"database in use by {count} other connection(s) (a running server?); "
        "stop it or pass --force"
    )
