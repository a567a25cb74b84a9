"""Events through PostgreSQL LISTEN/NOTIFY: every server process on the database gets
every event, its own included (local delivery goes through the database too, so the
order is the same for everyone).

Each process has one listening connection, checked regularly (a round trip every
`events_check_interval` seconds, which must answer within as long): a connection lost
or not answering is replaced, and since events may have been sent meanwhile, the bus
then tells its "events missed" listeners (docs/events.md).

An event whose JSON is too large for one notification (PostgreSQL refuses payloads of
8000 bytes or more) is sent as consecutive chunks, `#<index>/<count>#<text>`, by one
transaction: the notifications of a transaction reach the listeners together, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import structlog

from parsec_server.backend.config import BackendConfig
from parsec_server.backend.events import Event, EventBus, event_from_json, event_to_json
from parsec_server.backend.metrics import NULL_METRICS, Metrics
from parsec_server.backend.readiness import CheckOutcome, failed
from parsec_server.backend.storage.postgresql.pool import CONNECT_ERRORS, connect_with_retries

logger = structlog.get_logger("parsec.events")

CHANNEL = "parsec_events"
# How the listening connection shows in pg_stat_activity: one of the server's (as its
# pool's "parsec-server"), yet told apart from the pool's connections.
LISTENER_APPLICATION_NAME = "parsec-server events"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_SIZE = 7999
CHUNK_SIZE = MAX_PAYLOAD_SIZE - 32  # room for the `#<index>/<count>#` header
CHUNK_MARK = "#"  # an event's JSON starts with `{`
_SQL_NOTIFY = "SELECT pg_notify($1, $2)"
_SQL_CHECK = "SELECT 1"
RECONNECT_DELAY_SECONDS = 1.0
CLOSE_TIMEOUT_SECONDS = 2.0


def split_payload(payload: str, size: int = CHUNK_SIZE) -> list[str]:
    """The chunk notifications of a payload (pieces of at most `size` UTF-8 bytes, cut
    between characters)."""
    data = payload.encode()
    pieces = []
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # inside a character
            end -= 1
        pieces.append(data[start:end].decode())
        start = end
    count = len(pieces)
    return [f"{CHUNK_MARK}{index}/{count}{CHUNK_MARK}{piece}" for index, piece in enumerate(pieces)]


class PostgreSQLEventBus(EventBus):
    def __init__(
        self, config: BackendConfig, pool: asyncpg.Pool, metrics: Metrics = NULL_METRICS
    ) -> None:
        super().__init__(metrics)
        self._config = config
        self._pool = pool
        self._listener: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        # Chunks of large events being received, by sending backend.
        self._chunks: dict[int, list[str]] = {}

    @property
    def listener_pid(self) -> int | None:
        """The backend process id of the listening connection (None while there is none)."""
        if self._listener is None:
            return None
        pid: int = self._listener.get_server_pid()
        return pid

    async def send(self, event: Event) -> None:
        payload = event_to_json(event)
        if len(payload) * 4 <= MAX_PAYLOAD_SIZE or len(payload.encode()) <= MAX_PAYLOAD_SIZE:
            await self._pool.execute(_SQL_NOTIFY, CHANNEL, payload)
        else:
            chunks = split_payload(payload)
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(_SQL_NOTIFY, [(CHANNEL, chunk) for chunk in chunks])
        self._metrics.event_sent(event)

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if conn is not self._listener:
            return
        if payload.startswith(CHUNK_MARK):
            joined = self._add_chunk(pid, payload)
            if joined is None:
                return
            payload = joined
        try:
            event = event_from_json(payload)
        except ValueError:
            logger.warning("undecodable event", size=len(payload))
            return
        self._dispatch(event)

    def _add_chunk(self, pid: int, chunk: str) -> str | None:
        """The whole payload once its last chunk is there, else None."""
        header, _, piece = chunk[1:].partition(CHUNK_MARK)
        index_text, _, count_text = header.partition("/")
        try:
            index, count = int(index_text), int(count_text)
        except ValueError:
            logger.warning("undecodable event chunk", payload=chunk[:200])
            return None
        pieces = self._chunks.get(pid)
        if index == 0:
            pieces = self._chunks[pid] = []
        elif pieces is None or len(pieces) != index:
            # Cannot happen (a transaction's notifications arrive together, in order).
            self._chunks.pop(pid, None)
            self.notify_events_missed("an event arrived incomplete")
            return None
        pieces.append(piece)
        if len(pieces) < count:
            return None
        del self._chunks[pid]
        return "".join(pieces)

    def _on_termination(self, conn: Any) -> None:
        if conn is self._listener:
            self._lost.set()

    async def _listen(self) -> None:
        conn = await connect_with_retries(self._config, LISTENER_APPLICATION_NAME)
        try:
            self._listener = conn
            self._lost.clear()
            self._chunks.clear()
            conn.add_termination_listener(self._on_termination)
            await conn.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            self._listener = None
            conn.terminate()
            raise

    async def _until_lost(self) -> None:
        """Return once the listening connection is closed, or does not answer a check
        within `events_check_interval`."""
        conn = self._listener
        if conn is None:
            return
        interval = self._config.events_check_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), interval)
                return
            try:
                await asyncio.wait_for(conn.fetchval(_SQL_CHECK), interval)
            except TimeoutError:
                logger.error("event listener connection does not answer", seconds=interval)
                return
            except Exception as exc:
                logger.error("event listener connection check failed", error=str(exc))
                return

    async def keep_listening(self) -> None:
        """Replace the listening connection whenever it is lost; then say that events
        may have been missed (those sent while no connection was listening)."""
        while True:
            await self._until_lost()
            logger.error("event listener connection lost, reconnecting")
            lost, self._listener = self._listener, None
            if lost is not None:
                lost.terminate()
            while True:
                try:
                    await self._listen()
                    break
                except Exception as exc:  # StartupError or connection errors
                    logger.warning("event listener reconnection failed", error=str(exc))
                    await asyncio.sleep(RECONNECT_DELAY_SECONDS)
            logger.info("event listener connection back")
            self.notify_events_missed("the event listener connection was lost")

    async def check_ready(self, within: float) -> CheckOutcome:
        """Ready while the listening connection is up (its own checks, every
        `events_check_interval`, notice a silent loss): no round trip here."""
        if self._listener is None or self._lost.is_set():
            return failed("listening connection lost, reconnecting")
        return CheckOutcome(True)

    async def close(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(*CONNECT_ERRORS):
                await conn.close(timeout=CLOSE_TIMEOUT_SECONDS)


@contextlib.asynccontextmanager
async def postgresql_event_bus(
    config: BackendConfig, pool: asyncpg.Pool, metrics: Metrics = NULL_METRICS
) -> AsyncIterator[PostgreSQLEventBus]:
    bus = PostgreSQLEventBus(config, pool, metrics)
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
