"""Running the server: build the backend (database first), then listen."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import structlog
import uvicorn
import uvloop

from parsec_server.backend.app import BackendApp, backend_app_factory
from parsec_server.backend.asgi.app import BackendASGIApp
from parsec_server.backend.asgi.limits import (
    LimitedHttpToolsProtocol,
    LimitedWebSocketProtocol,
    PendingLimits,
    descriptor_warning_floor,
    http_protocol_class,
)
from parsec_server.backend.asgi.metrics import running_metrics
from parsec_server.backend.asgi.metrics_server import parent_metrics
from parsec_server.backend.config import (
    BackendConfig,
    BlockstoreConfig,
    MockedBlockstoreConfig,
    RaidBlockstoreConfig,
    StartupError,
)
from parsec_server.backend.sentry import init_sentry

logger = structlog.get_logger(__name__)

# The 2.0.0 client's largest request is about 1 MiB + 200 bytes (a vlob or re-encryption
# blob at the 1 MiB bin limit; blocks are 512 KiB): 4 MiB leaves room for three such blobs,
# and bounds what one message costs the transport (docs/frame-outcomes.md). A larger
# message is closed with 1009.
WS_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


def uvicorn_config(config: BackendConfig, app: BackendASGIApp) -> uvicorn.Config:
    limits = PendingLimits(
        header_timeout=config.http_header_timeout,
        max_per_peer=config.max_pending_connections_per_peer,
        descriptor_floor=descriptor_warning_floor(),
    )
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
        ws=LimitedWebSocketProtocol,  # websockets-sansio
        ws_max_size=WS_MAX_MESSAGE_SIZE,
        ws_ping_interval=None,  # the reference never pings its clients
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        http=http_protocol_class(limits),  # httptools
        loop="uvloop",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=1,
        # X-Forwarded-For / -Proto, believed from these peers only (asgi/proxy.py).
        proxy_headers=bool(config.proxy_trusted_addresses),
        forwarded_allow_ips=list(config.proxy_trusted_addresses),
    )


class Server(uvicorn.Server):
    """uvicorn's server, listening by itself to give the TLS handshake a deadline: the
    header timeout (uvicorn leaves the event loop's default of 60 s). The request's own
    deadline starts once the handshake is done (see `limits`)."""

    def __init__(self, config: uvicorn.Config, tls_handshake_timeout: float) -> None:
        super().__init__(config)
        self._tls_handshake_timeout = tls_handshake_timeout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # everything but listening
        config = self.config
        protocol_class = config.http_protocol_class
        assert issubclass(protocol_class, LimitedHttpToolsProtocol)

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return protocol_class(
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if config.ssl is not None:
            tls = {"ssl": config.ssl, "ssl_handshake_timeout": self._tls_handshake_timeout}
        if sockets is None:
            try:
                server = await loop.create_server(
                    create_protocol,
                    host=config.host,
                    port=config.port,
                    backlog=config.backlog,
                    **tls,
                )
            except OSError as exc:
                raise StartupError(f"Cannot listen on {config.host}:{config.port}: {exc}") from exc
            self.servers = [server]
        else:
            self.servers = [
                await loop.create_server(create_protocol, sock=sock, backlog=config.backlog, **tls)
                for sock in sockets
            ]


def make_server(config: BackendConfig, app: BackendASGIApp) -> Server:
    return Server(uvicorn_config(config, app), tls_handshake_timeout=config.http_header_timeout)


@contextlib.asynccontextmanager
async def running_backend(
    config: BackendConfig, sock: socket.socket | None = None
) -> AsyncIterator[tuple[BackendApp, int]]:
    """Serve in the background for the duration of the block; yields (app, port).
    Used by tests and benchmarks; `port=0` in the config picks a free port."""
    async with (
        running_metrics(config) as metrics,
        backend_app_factory(config, metrics) as backend,
    ):
        server = make_server(config, BackendASGIApp(backend))
        uv_config = server.config
        uv_config.load()
        # Started by hand rather than with `serve()`: no signal handlers (we may not be
        # the main program) and no 0.1 s polling loop (tests start hundreds of servers).
        server.lifespan = uv_config.lifespan_class(uv_config)
        if sock is None:
            sock = socket.create_server((config.host, config.port), reuse_port=False)
        port = sock.getsockname()[1]
        await server.startup(sockets=[sock])
        try:
            yield backend, port
        finally:
            await _stop(server)


async def _stop(server: uvicorn.Server) -> None:
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        connection.shutdown()
    tasks = list(server.server_state.tasks)
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=1)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for listener in server.servers:
        await listener.wait_closed()


async def serve(config: BackendConfig, sock: socket.socket | None = None) -> None:
    """Serve until interrupted (raises StartupError before listening on a bad setup)."""
    async with (
        running_metrics(config) as metrics,
        backend_app_factory(config, metrics) as backend,
    ):
        server = make_server(config, BackendASGIApp(backend))
        await server.serve(sockets=[sock] if sock is not None else None)


async def _check_storage(config: BackendConfig) -> None:
    async with backend_app_factory(config):
        pass


def _worker(config: BackendConfig, sock: socket.socket) -> None:
    init_sentry(config)  # a client of its own, not the one forked from the parent
    with contextlib.suppress(KeyboardInterrupt):
        try:
            uvloop.run(serve(config, sock))
        except Exception:
            logger.exception("Worker stopped by an unexpected error")
            raise


def _uses_memory_blockstore(blockstore: BlockstoreConfig) -> bool:
    if isinstance(blockstore, RaidBlockstoreConfig):
        return any(isinstance(node, MockedBlockstoreConfig) for node in blockstore.nodes)
    return isinstance(blockstore, MockedBlockstoreConfig)


def run_server(config: BackendConfig) -> None:
    """Serve in this process, or in `config.workers` processes sharing one listening
    socket (every piece of shared state lives in PostgreSQL)."""
    if config.workers == 1:
        uvloop.run(serve(config))
        return
    if config.db_type == "MOCKED" or _uses_memory_blockstore(config.blockstore):
        raise StartupError(
            "--workers above 1 needs --db and --blockstore outside memory (MOCKED storage "
            "lives in one process)"
        )
    # Fail before forking, with one clear message, if the database is not usable.
    uvloop.run(_check_storage(config))
    sock = socket.create_server((config.host, config.port), reuse_port=False, backlog=2048)
    sock.set_inheritable(True)
    # Before forking: the workers inherit where to write their metrics.
    metrics = parent_metrics(config)
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_worker, args=(config, sock), name=f"parsec-worker-{i}")
        for i in range(config.workers)
    ]
    for worker in workers:
        worker.start()
    if metrics is not None:
        metrics.serve(workers)

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
        if metrics is not None:
            metrics.close()
