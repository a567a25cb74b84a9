"""Running the server: build the backend (database first), then listen; on SIGTERM or
SIGINT, shut down gracefully (docs/deployment.md):

1. stop accepting connections; `/readyz` answers 503 (to connections already open);
2. close every websocket with 1001 (going away) as soon as it is not processing a
   request: at once if it waits (for its next request, an event, an invitation peer),
   else after the reply to the request in progress;
3. past the shutdown timeout (less a reserve for step 4), abandon the requests still in
   progress (their connections closed with 1001);
4. close the database and the blockstore, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import structlog
import uvicorn
import uvloop
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from parsec_server.backend.app import BackendApp, backend_app_factory
from parsec_server.backend.asgi.app import BackendASGIApp
from parsec_server.backend.asgi.lifecycle import Lifecycle
from parsec_server.backend.asgi.limits import (
    LimitedHttpToolsProtocol,
    LimitedWebSocketProtocol,
    PendingLimits,
    descriptor_warning_floor,
    http_protocol_class,
)
from parsec_server.backend.asgi.metrics import running_metrics
from parsec_server.backend.asgi.metrics_server import parent_metrics
from parsec_server.backend.asgi.process import (
    ProcessRole,
    ShutdownSignals,
    StandaloneProcess,
    keep_alive,
)
from parsec_server.backend.asgi.systemd import SystemdNotifier
from parsec_server.backend.asgi.workers import run_workers
from parsec_server.backend.config import (
    BackendConfig,
    BlockstoreConfig,
    MockedBlockstoreConfig,
    RaidBlockstoreConfig,
    StartupError,
)
from parsec_server.backend.sentry import init_sentry

logger = structlog.get_logger("parsec.server")

# Seconds given to websockets that sent their Close to get the client's answer, at the end
# of a shutdown (a client answers at once; one that does not is cut off).
CLOSE_HANDSHAKE_WAIT = 1.0

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
        # X-Forwarded-For / -Proto, believed from these peers only (asgi/proxy.py).
        proxy_headers=bool(config.proxy_trusted_addresses),
        forwarded_allow_ips=list(config.proxy_trusted_addresses),
    )


class Server(uvicorn.Server):
    """uvicorn's server, listening by itself to give the TLS handshake a deadline: the
    header timeout (uvicorn leaves the event loop's default of 60 s). The request's own
    deadline starts once the handshake is done (see `limits`)."""

    def __init__(
        self, config: uvicorn.Config, tls_handshake_timeout: float, lifecycle: Lifecycle
    ) -> None:
        super().__init__(config)
        self._tls_handshake_timeout = tls_handshake_timeout
        self.lifecycle = lifecycle

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen (on `sock`, else on the configured address). Started by hand rather than
        with `serve()`: uvicorn's signal handling and its 0.1 s polling loop are not used
        (see `serve` below; tests start hundreds of servers)."""
        config = self.config
        if not config.loaded:
            config.load()
        self.lifespan = config.lifespan_class(config)
        await self.startup(sockets=[sock] if sock is not None else None)

    async def stop(self, grace: float) -> None:
        """Graceful shutdown, steps 1 to 3 of the module's docstring: requests in progress
        get `grace` seconds; returns within about that (plus `CLOSE_HANDSHAKE_WAIT`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.lifecycle.start_draining()
        for listener in self.servers:
            listener.close()
        if not await self.lifecycle.wait_connections_closed(grace):
            logger.warning(
                "Shutdown timeout: abandoning the requests still in progress",
                connections=self.lifecycle.open_connections,
            )
            self.lifecycle.abandon_all()
            await self.lifecycle.wait_connections_closed(CLOSE_HANDSHAKE_WAIT)
        await self._wait_websockets_closed(min(CLOSE_HANDSHAKE_WAIT, deadline - loop.time()))
        # What is left: plain HTTP connections (an answer being sent, a request not
        # complete yet), websockets whose client did not answer our Close.
        for connection in list(self.server_state.connections):
            connection.shutdown()
        tasks = list(self.server_state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.1, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for listener in self.servers:
            await listener.wait_closed()

    async def _wait_websockets_closed(self, within: float) -> None:
        """Until no websocket is left (they wait for the client's answer to our Close)."""
        end = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < end and any(  # noqa: ASYNC110
            isinstance(connection, WebSocketsSansIOProtocol)
            for connection in self.server_state.connections
        ):
            await asyncio.sleep(0.02)  # uvicorn's connection set has no event

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
    return Server(
        uvicorn_config(config, app),
        tls_handshake_timeout=config.http_header_timeout,
        lifecycle=app.lifecycle,
    )


@contextlib.asynccontextmanager
async def running_backend(
    config: BackendConfig, sock: socket.socket | None = None, shutdown_grace: float = 1.0
) -> AsyncIterator[tuple[BackendApp, int]]:
    """Serve in the background for the duration of the block; yields (app, port).
    Used by tests and benchmarks; `port=0` in the config picks a free port. No signal
    handling (we may not be the main program); the block's end shuts down gracefully,
    giving requests in progress `shutdown_grace` seconds."""
    async with (
        running_metrics(config) as metrics,
        backend_app_factory(config, metrics) as backend,
    ):
        server = make_server(config, BackendASGIApp(backend))
        if sock is None:
            sock = socket.create_server((config.host, config.port), reuse_port=False)
        port = sock.getsockname()[1]
        await server.start(sock)
        try:
            yield backend, port
        finally:
            await server.stop(shutdown_grace)


async def serve(
    config: BackendConfig, sock: socket.socket | None = None, role: ProcessRole | None = None
) -> int | None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (see the module's
    docstring; asgi/process.py for the signals). Raises StartupError before listening on
    a bad setup. Returns the signal that stopped the server."""
    if role is None:
        role = StandaloneProcess(SystemdNotifier.from_environment())
    signals = ShutdownSignals(config.shutdown_timeout, force_on_second=role.force_on_second_signal)
    signals.install()
    try:
        async with (
            running_metrics(config) as metrics,
            backend_app_factory(config, metrics) as backend,
        ):
            server = make_server(config, BackendASGIApp(backend))
            await server.start(sock)
            signals.serving()
            role.ready(f"Serving on {config.host}:{config.port}")
            alive = asyncio.create_task(keep_alive(role))
            try:
                await signals.wait()
                role.stopping("Shutting down")
                loop = asyncio.get_running_loop()
                await server.stop(max(0.0, signals.drain_deadline() - loop.time()))
            finally:
                alive.cancel()
                await asyncio.gather(alive, return_exceptions=True)
            # Leaving the block closes the database and the blockstore.
    except asyncio.CancelledError:
        if not signals.interrupted():  # a signal during start-up
            raise
    finally:
        signals.uninstall()
        role.close()
    return signals.received


async def _check_storage(config: BackendConfig) -> None:
    async with backend_app_factory(config):
        pass


def _uses_memory_blockstore(blockstore: BlockstoreConfig) -> bool:
    if isinstance(blockstore, RaidBlockstoreConfig):
        return any(isinstance(node, MockedBlockstoreConfig) for node in blockstore.nodes)
    return isinstance(blockstore, MockedBlockstoreConfig)


def run_server(config: BackendConfig) -> None:
    """Serve in this process, or in `config.workers` processes sharing one listening
    socket (every piece of shared state lives in PostgreSQL), until SIGTERM or SIGINT.
    Stopped by SIGINT, raises KeyboardInterrupt once the shutdown is over (the command
    line says `bye ;-)`)."""
    received = uvloop.run(serve(config)) if config.workers == 1 else _run_workers(config)
    if received == signal.SIGINT:
        raise KeyboardInterrupt


def _run_workers(config: BackendConfig) -> int | None:
    if config.db_type == "SQLITE":
        raise StartupError(
            "--workers above 1 is not possible with SQLite (one process owns the database "
            "file and its events): use --workers 1, or PostgreSQL"
        )
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
    try:
        return run_workers(
            config, sock, _worker, on_started=metrics.serve if metrics is not None else None
        )
    finally:
        sock.close()
        if metrics is not None:
            metrics.close()


def _worker(config: BackendConfig, sock: socket.socket, role: ProcessRole) -> None:
    """A worker process's main (forked by `run_workers`)."""
    init_sentry(config)  # a client of its own, not the one forked from the parent
    try:
        uvloop.run(serve(config, sock, role))
    except StartupError as exc:
        logger.error("Worker could not start", error=str(exc))
        raise SystemExit(1) from None
    except Exception:
        logger.exception("Worker stopped by an unexpected error")
        raise
