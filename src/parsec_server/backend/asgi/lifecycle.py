"""The serving state of one server process, shared by the ASGI app and the server.

Once `start_draining` is called (the process is shutting down), `GET /readyz` answers 503,
every websocket connection is closed with 1001 (going away) as soon as it is not
processing a request (`ClientConnection.drain`), and websockets accepted afterwards are
closed with 1001 at once. `wait_connections_closed` lets the server wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parsec_server.backend.asgi.connection import ClientConnection


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self._connections: set[ClientConnection] = set()
        self._all_closed: asyncio.Event | None = None

    @property
    def open_connections(self) -> int:
        """Websocket connections being served (handshake included)."""
        return len(self._connections)

    @contextlib.contextmanager
    def tracking(self, connection: ClientConnection) -> Iterator[None]:
        """For the duration of the connection's `serve`."""
        self._connections.add(connection)
        if self.draining:
            connection.drain()
        try:
            yield
        finally:
            self._connections.discard(connection)
            if not self._connections and self._all_closed is not None:
                self._all_closed.set()

    def start_draining(self) -> None:
        if self.draining:
            return
        self.draining = True
        for connection in list(self._connections):
            connection.drain()

    def abandon_all(self) -> None:
        """Past the shutdown timeout: close every connection with 1001 now, abandoning
        the request it processes."""
        for connection in list(self._connections):
            connection.abandon()

    async def wait_connections_closed(self, within: float) -> bool:
        """Whether every websocket connection ended within `within` seconds."""
        if not self._connections:
            return True
        if self._all_closed is None:
            self._all_closed = asyncio.Event()
        self._all_closed.clear()
        try:
            async with asyncio.timeout(max(within, 0)):
                while self._connections:
                    await self._all_closed.wait()
                    self._all_closed.clear()
        except TimeoutError:
            return False
        return True
