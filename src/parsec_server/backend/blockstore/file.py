"""Blocks as files in a directory (`--blockstore file:DIR`, docs/storage-files.md).

Every operation is one call of `BlockDirectory` in one of the store's own worker threads
(the event loop never waits on the disk), bounded by the operation timeout of the other
stores: a disk that hangs (a network file system gone) is the `timeout` reply too. Any
failure of the disk (full, read-only, unwritable, gone) is `UNAVAILABLE`, logged with its
cause; `BlockDirectory` leaves nothing half-written behind.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.blockdir import BlockDirectory
from parsec_server.backend.blockstore.remote import (
    DEFAULT_TIMEOUTS,
    log_unavailable,
    object_key,
    one_line,
)
from parsec_server.backend.config import StartupError
from parsec_server.backend.readiness import CheckOutcome, exception_outcome

logger = structlog.get_logger("parsec.blockstore")

T = TypeVar("T")

# Threads doing the file operations of one store (disk calls wait, they use no CPU).
IO_THREADS = 8


class FileBlockStore(BlockStore):
    type_name = "FILE"

    def __init__(
        self, directory: BlockDirectory, timeout: float = DEFAULT_TIMEOUTS.operation
    ) -> None:
        self.directory = directory
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="parsec-blockdir")

    @classmethod
    async def start(
        cls, directory: BlockDirectory, operation_timeout: float = DEFAULT_TIMEOUTS.operation
    ) -> FileBlockStore:
        """The store, its directory checked (StartupError, one line, if unusable)."""
        store = cls(directory, operation_timeout)
        try:
            removed = await store._call(directory.prepare)
        except TimeoutError:
            await store.close()
            raise StartupError(
                f"Cannot use block directory `{directory.root}`: "
                f"no answer within {operation_timeout} s"
            ) from None
        except OSError as exc:
            await store.close()
            reason = exc.strerror or one_line(exc)
            raise StartupError(f"Cannot use block directory `{directory.root}`: {reason}") from exc
        except BaseException:
            await store.close()
            raise
        if removed:
            logger.info(
                "block directory: temporary files of an interrupted run removed",
                directory=str(directory.root),
                count=removed,
            )
        return store

    async def _call(self, operation: Callable[..., T], *args: object) -> T:
        # On the timeout the thread is left to finish on its own; what it then does is
        # what a retry of the same create or delete would do.
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            return await loop.run_in_executor(self._executor, functools.partial(operation, *args))

    async def check_ready(self, within: float) -> CheckOutcome:
        """A file created and removed in the directory; the bytes available as details."""
        try:
            async with asyncio.timeout(within):
                available = await self._call(self.directory.probe)
        except Exception as exc:
            return exception_outcome(exc, type=self.type_name)
        return CheckOutcome(True, {"type": self.type_name, "available_bytes": available})

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        try:
            await self._call(self.directory.write, organization_id, block_id, data)
        except OSError as exc:  # TimeoutError included
            log_unavailable("file", "create", object_key(organization_id, block_id), exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        try:
            data = await self._call(self.directory.read, organization_id, block_id)
        except OSError as exc:  # TimeoutError included
            log_unavailable("file", "read", object_key(organization_id, block_id), exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return BlockStoreBadOutcome.NOT_FOUND if data is None else data

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        try:
            await self._call(self.directory.delete, organization_id, block_id)
        except OSError as exc:  # TimeoutError included
            log_unavailable("file", "delete", object_key(organization_id, block_id), exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def close(self) -> None:
        # Nothing is in progress at the server's exit; waiting in a thread keeps the event
        # loop free if something still is.
        await asyncio.to_thread(self._executor.shutdown)
