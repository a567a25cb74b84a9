"""Running the server: build the backend (database first), then listen."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
import uvloop

from parsec_server.backend.app import BackendApp, backend_app_factory
from parsec_server.backend.asgi import BackendASGIApp
from parsec_server.backend.config import BackendConfig

# The protocol carries 1 MiB blocks (plus envelope); leave room for several per message.
WS_MAX_MESSAGE_SIZE = 32 * 1024 * 1024


def uvicorn_config(config: BackendConfig, app: BackendASGIApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
        ws="websockets-sansio",
        ws_max_size=WS_MAX_MESSAGE_SIZE,
        ws_ping_interval=None,  # the reference never pings its clients
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        http="httptools",
        loop="uvloop",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=1,
    )


@contextlib.asynccontextmanager
async def running_backend(
    config: BackendConfig, sock: socket.socket | None = None
) -> AsyncIterator[tuple[BackendApp, int]]:
    """Serve in the background for the duration of the block; yields (app, port).
    Used by tests and benchmarks; `port=0` in the config picks a free port."""
    async with backend_app_factory(config) as backend:
        server = uvicorn.Server(uvicorn_config(config, BackendASGIApp(backend)))
        if sock is None:
            sock = socket.create_server((config.host, config.port), reuse_port=False)
        port = sock.getsockname()[1]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        try:
            yield backend, port
        finally:
            server.should_exit = True
            server.force_exit = True
            await task


async def serve(config: BackendConfig) -> None:
    """Serve until cancelled (raises StartupError before listening on a bad setup)."""
    async with backend_app_factory(config) as backend:
        server = uvicorn.Server(uvicorn_config(config, BackendASGIApp(backend)))
        await server.serve()


def run_server(config: BackendConfig) -> None:
    uvloop.run(serve(config))
