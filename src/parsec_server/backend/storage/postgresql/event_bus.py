"""Events through PostgreSQL LISTEN/NOTIFY: every server process on the database gets
every event, its own included (local delivery goes through the database too, so the
order is the same for everyone)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import structlog

from parsec_server.backend.config import BackendConfig
from parsec_server.backend.events import Event, EventBus, event_from_json, event_to_json
from parsec_server.backend.storage.postgresql.pool import CONNECT_ERRORS, connect_with_retries

logger = structlog.get_logger("parsec.events")

CHANNEL = "parsec_events"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_SIZE = 7999
_SQL_NOTIFY = "SELECT pg_notify($1, $2)"
RECONNECT_DELAY_SECONDS = 1.0


class PostgreSQLEventBus(EventBus):
    def __init__(self, config: BackendConfig, pool: asyncpg.Pool) -> None:
        super().__init__()
        self._config = config
        self._pool = pool
        self._listener: asyncpg.Connection | None = None
        self._lost = asyncio.Event()

    async def send(self, event: Event) -> None:
        payload = event_to_json(event)
        if len(payload.encode("utf8")) > MAX_PAYLOAD_SIZE:
            logger.warning("event too big to be sent, dropped", event=type(event).__name__)
            return
        await self._pool.execute(_SQL_NOTIFY, CHANNEL, payload)

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            event = event_from_json(payload)
        except ValueError:
            logger.warning("undecodable event", size=len(payload))
            return
        self._dispatch(event)

    def _on_termination(self, conn: Any) -> None:
        self._lost.set()

    async def _listen(self) -> None:
        conn = await connect_with_retries(self._config)
        conn.add_termination_listener(self._on_termination)
        await conn.add_listener(CHANNEL, self._on_notification)
        self._listener = conn

    async def keep_listening(self) -> None:
        """Reconnect the listening connection whenever it is lost (events sent while it
        was down are lost: connections in this process miss them)."""
        while True:
            await self._lost.wait()
            self._lost.clear()
            logger.error("event listener connection lost, reconnecting")
            while True:
                try:
                    await self._listen()
                    break
                except Exception as exc:  # StartupError or connection errors
                    logger.warning("event listener reconnection failed", error=str(exc))
                    await asyncio.sleep(RECONNECT_DELAY_SECONDS)

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(*CONNECT_ERRORS):
                await self._listener.close()


@contextlib.asynccontextmanager
async def postgresql_event_bus(
    config: BackendConfig, pool: asyncpg.Pool
) -> AsyncIterator[PostgreSQLEventBus]:
    bus = PostgreSQLEventBus(config, pool)
    await bus._listen()
    watcher = asyncio.create_task(bus.keep_listening())
    try:
        yield bus
    finally:
        try:
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                # Only the watcher's own cancellation is expected here: a cancellation of
                # this task (e.g. asyncio.run's SIGINT handling, which turns Ctrl-C into
                # KeyboardInterrupt) must go on, or the server exits without `bye ;-)`.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        finally:
            await bus.close()
