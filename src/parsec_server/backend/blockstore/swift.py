"""OpenStack Swift (`swift:<auth_url>:<tenant>:<container>:<user>:<password>`),
protocol/50-block-blockstore.md section 5.2.

python-swiftclient is synchronous: each call runs in a worker thread (`asyncio.to_thread`).
A `swiftclient.Connection` (its token and HTTP session) is not safe to share between
threads, so each call borrows one from a small pool and gives it back, keeping the
authentication and the HTTP connection for the next call. Auth version 1.0 with
`X-Auth-User: <user>:<tenant>` and `X-Auth-Key: <password>`, as the reference.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import swiftclient  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.remote import (
    DEFAULT_TIMEOUTS,
    RemoteTimeouts,
    log_unavailable,
    object_key,
    one_line,
)
from parsec_server.backend.config import StartupError, SwiftBlockstoreConfig
from parsec_server.backend.readiness import CheckOutcome, exception_outcome, failed

T = TypeVar("T")

_MAX_IDLE_CONNECTIONS = 8


def _http_status(exc: BaseException) -> int | None:
    if isinstance(exc, swiftclient.ClientException):
        status: int | None = exc.http_status
        return status
    return None


class SwiftBlockStore(BlockStore):
    type_name = "SWIFT"

    def __init__(
        self, config: SwiftBlockstoreConfig, timeouts: RemoteTimeouts = DEFAULT_TIMEOUTS
    ) -> None:
        self._config = config
        self._container = config.container
        self._timeouts = timeouts
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    async def start(
        cls, config: SwiftBlockstoreConfig, timeouts: RemoteTimeouts = DEFAULT_TIMEOUTS
    ) -> SwiftBlockStore:
        """Authenticate and check the container (HEAD); StartupError if unusable."""
        store = cls(config, timeouts)
        try:
            await store._call(lambda conn: conn.head_container(config.container))
        except Exception as exc:
            await store.close()
            problem = one_line(exc)
            if isinstance(exc, TimeoutError):
                problem = f"no answer within {timeouts.operation:g} s"
            raise StartupError(
                f"Cannot use Swift container `{config.container}` at {config.auth_url}: {problem}"
            ) from exc
        return store

    def _new_connection(self) -> Any:
        return swiftclient.Connection(
            authurl=self._config.auth_url,
            user=f"{self._config.user}:{self._config.tenant}",
            key=self._config.password,
            auth_version="1",
            retries=self._timeouts.attempts - 1,
            starting_backoff=0.2,
            max_backoff=1.0,
            timeout=(self._timeouts.connect, self._timeouts.read),
        )

    def _run_in_thread(self, operation: Callable[[Any], T]) -> T:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._new_connection()
        try:
            result = operation(conn)
        except BaseException as exc:
            if _http_status(exc) is None:
                conn.close()  # not a clean HTTP answer: the connection may be in any state
                raise
            self._give_back(conn)  # e.g. a 404: the connection is fine
            raise
        self._give_back(conn)
        return result

    def _give_back(self, conn: Any) -> None:
        with self._lock:
            if self._closed or len(self._idle) >= _MAX_IDLE_CONNECTIONS:
                conn.close()
            else:
                self._idle.append(conn)

    async def _call(self, operation: Callable[[Any], T]) -> T:
        # On the ceiling, the thread is left to finish on its own (bounded by the
        # connection's own timeouts); it gives its connection back when done.
        async with asyncio.timeout(self._timeouts.operation):
            return await asyncio.to_thread(self._run_in_thread, operation)

    async def check_ready(self, within: float) -> CheckOutcome:
        """HEAD container, as at start-up (authenticating first if needed)."""
        container = self._container
        try:
            async with asyncio.timeout(within):
                await self._call(lambda conn: conn.head_container(container))
        except Exception as exc:
            status = _http_status(exc)
            if status is not None:
                return failed(
                    f"HTTP {status}", f"HEAD container: {one_line(exc)}", type=self.type_name
                )
            return exception_outcome(exc, type=self.type_name)
        return CheckOutcome(True, {"type": self.type_name})

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        name = object_key(organization_id, block_id)
        container = self._container

        try:
            # Replaces a failed attempt's object (the reference looked first and kept it).
            await self._call(lambda conn: conn.put_object(container, name, data))
        except Exception as exc:  # any failure of the store is the `timeout` reply
            log_unavailable("swift", "create", name, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        name = object_key(organization_id, block_id)
        container = self._container
        try:
            _, body = await self._call(lambda conn: conn.get_object(container, name))
        except Exception as exc:
            if _http_status(exc) == 404:
                return BlockStoreBadOutcome.NOT_FOUND
            log_unavailable("swift", "read", name, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return bytes(body)

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        name = object_key(organization_id, block_id)
        container = self._container
        try:
            await self._call(lambda conn: conn.delete_object(container, name))
        except Exception as exc:
            if _http_status(exc) == 404:
                return None
            log_unavailable("swift", "delete", name, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return None
