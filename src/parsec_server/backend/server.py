"""Running the server: build the backend (database first), then listen."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
from collections.abc import AsyncIterator

import uvicorn
import uvloop

from parsec_server.backend.app import BackendApp, backend_app_factory
from parsec_server.backend.asgi import BackendASGIApp
from parsec_server.backend.config import BackendConfig, StartupError

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


async def serve(config: BackendConfig, sock: socket.socket | None = None) -> None:
    """Serve until interrupted (raises StartupError before listening on a bad setup)."""
    async with backend_app_factory(config) as backend:
        server = uvicorn.Server(uvicorn_config(config, BackendASGIApp(backend)))
        await server.serve(sockets=[sock] if sock is not None else None)


async def _check_storage(config: BackendConfig) -> None:
    async with backend_app_factory(config):
        pass


def _worker(config: BackendConfig, sock: socket.socket) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(config, sock))


def run_server(config: BackendConfig) -> None:
    """Serve in this process, or in `config.workers` processes sharing one listening
    socket (every piece of shared state lives in PostgreSQL)."""
    if config.workers == 1:
        uvloop.run(serve(config))
        return
    if config.db_type == "MOCKED" or config.blockstore.type_name == "MOCKED":
        raise StartupError(
            "--workers above 1 needs --db and --blockstore outside memory (MOCKED storage "
            "lives in one process)"
        )
    # Fail before forking, with one clear message, if the database is not usable.
    uvloop.run(_check_storage(config))
    sock = socket.create_server((config.host, config.port), reuse_port=False, backlog=2048)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_worker, args=(config, sock), name=f"parsec-worker-{i}")
        for i in range(config.workers)
    ]
    for worker in workers:
        worker.start()

    def stop_workers(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    # A supervisor stops the server with SIGTERM: pass it on, or the workers outlive us.
    signal.signal(signal.SIGTERM, stop_workers)
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
        raise
    finally:
        sock.close()
