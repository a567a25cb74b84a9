"""A websocket seen through ASGI: binary messages in and out, nothing else."""

from __future__ import annotations

import contextlib
from typing import Any

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable


class WebSocketClosed(Exception):
    """The peer left (or the connection broke)."""


class TextFrame:
    """Marker returned by `receive` when the peer sent a text message (a protocol error)."""


TEXT_FRAME = TextFrame()


class AsgiWebSocket:
    __slots__ = ("_receive", "_send", "closed")

    def __init__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        self._receive = receive
        self._send = send
        self.closed = False

    async def accept(self) -> bool:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            self.closed = True
            return False
        await self._send({"type": "websocket.accept"})
        return True

    async def receive(self) -> bytes | TextFrame:
        message: Any = await self._receive()
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            if data is not None:
                return bytes(data)
            return TEXT_FRAME
        self.closed = True
        raise WebSocketClosed()

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise WebSocketClosed()
        try:
            await self._send({"type": "websocket.send", "bytes": data})
        except OSError as exc:  # uvicorn raises ClientDisconnected (an OSError)
            self.closed = True
            raise WebSocketClosed() from exc

    async def close(self, code: int = 1000) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            await self._send({"type": "websocket.close", "code": code})
