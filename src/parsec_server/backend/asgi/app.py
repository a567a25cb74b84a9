"""The ASGI entry: websocket connections run the protocol, plain HTTP requests get the
health checks, the administration API (`administration/`) or the small router of
`routes`."""

from __future__ import annotations

import time
from typing import Any

import structlog

from parsec_server.backend.app import BackendApp
from parsec_server.backend.asgi import request_log
from parsec_server.backend.asgi.administration.api import AdministrationApi
from parsec_server.backend.asgi.commands import CommandTables
from parsec_server.backend.asgi.connection import ClientConnection
from parsec_server.backend.asgi.health import HealthRoutes
from parsec_server.backend.asgi.lifecycle import Lifecycle
from parsec_server.backend.asgi.proxy import peer_address
from parsec_server.backend.asgi.routes import route_http, send_response
from parsec_server.backend.asgi.websocket import AsgiWebSocket

logger = structlog.get_logger("parsec.asgi")


class BackendASGIApp:
    def __init__(self, backend: BackendApp) -> None:
        self.backend = backend
        self._tables = CommandTables(backend)
        # Shutdown state (`asgi.server` drains it) and the health routes that report it.
        self.lifecycle = Lifecycle()
        self._health = HealthRoutes(backend.readiness, self.lifecycle, backend.config.debug)
        self._administration = AdministrationApi(backend)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "websocket":
            ws = AsgiWebSocket(receive, send)
            if await ws.accept():
                connection = ClientConnection(self.backend, self._tables, ws, peer_address(scope))
                with self.lifecycle.tracking(connection):
                    await connection.serve()
        elif kind == "http":
            if self._health.handles(scope["path"]):
                await self._health.serve(scope, send)
            elif self._administration.handles(scope["path"]):
                await self._administration.serve(scope, receive, send)
            else:
                await self._http(scope, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Any, send: Any) -> None:
        started = time.perf_counter()
        raw_path = scope.get("raw_path") or scope["path"].encode("utf8")
        path = raw_path.decode("latin-1")
        response = route_http(
            scope["method"],
            path,
            scope["query_string"].decode("latin-1"),
            self.backend.config.backend_addr,
            self.backend.config.debug,
        )
        await send_response(send, response)
        if request_log.enabled():
            request_log.http_request(scope, scope["method"], path, response.status, started)


async def _lifespan(receive: Any, send: Any) -> None:
    # The backend is built before the server starts listening (server.py), so that a
    # start-up failure never leaves a listening socket; nothing to do here.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
