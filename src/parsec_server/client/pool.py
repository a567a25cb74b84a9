"""Several connections of one device, for transfers in parallel (one command at a time
on each connection); opened as needed, up to `size`, closed together."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice


class ConnectionPool:
    def __init__(
        self, device: LocalDevice, size: int, first: BackendConnection | None = None
    ) -> None:
        """`first`, an open connection of the device, is used too (and left open)."""
        if size < 1:
            raise ValueError("A pool needs at least one connection")
        self._device = device
        self._size = size
        self._idle: asyncio.Queue[BackendConnection] = asyncio.Queue()
        self._opened: list[BackendConnection] = []
        if first is not None:
            self._idle.put_nowait(first)
        self._count = 0 if first is None else 1

    async def _acquire(self) -> BackendConnection:
        if self._idle.empty() and self._count < self._size:
            self._count += 1
            try:
                conn = await self._device.connect()
            except BaseException:
                self._count -= 1
                raise
            self._opened.append(conn)
            return conn
        return await self._idle.get()

    async def cmd(self, cmd: str, **fields: Any) -> dict[str, Any]:
        conn = await self._acquire()
        try:
            return await conn.cmd(cmd, **fields)
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._opened:
            await conn.close()
        self._opened.clear()

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
