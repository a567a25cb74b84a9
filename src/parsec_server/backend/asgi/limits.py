"""Limits on connections that have not sent a complete request yet (docs/hardening.md).

A connection is *pending* from the moment its protocol object is connected (after the TLS
handshake when TLS is on) until the headers of its HTTP request are complete or, for a
websocket, until the `101` answer is written. While pending, a connection

- has a deadline (`http_header_timeout`): not done by then, it is dropped (empty lines
  before the request line count as part of the request, so `\\r\\n\\r\\n` then silence is
  dropped too);
- counts against its peer address (`max_pending_connections_per_peer`): a connection
  arriving while its address already has that many pending ones is dropped at once.

The application handshake that follows a websocket upgrade has its own deadline (see
`asgi.connection`); plain HTTP requests are answered and closed at once by `asgi.app`.

The limits live in subclasses of uvicorn's protocol classes: the HTTP protocol (httptools)
arms the deadline when connected and ends it when the request headers are complete; on a
websocket upgrade it hands the pending state to the websocket protocol (websockets-sansio),
which ends it once the `101` is written. Nothing here runs per frame or per command.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from typing import ClassVar

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

logger = structlog.get_logger(__name__)

# At most one warning per second for each peer address refused, and one for descriptors.
WARNING_INTERVAL = 1.0
# Refused addresses remembered for the warning interval; pruned beyond this many.
_WARNED_PEERS_PRUNE_SIZE = 1024


def descriptor_warning_floor() -> int | None:
    """Lowest descriptor number that means fewer than 5% of the process's descriptors
    (`RLIMIT_NOFILE`) are left; None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return soft - max(8, soft // 20)


class PendingLimits:
    """The pending connections of one server (one process), by peer address."""

    __slots__ = (
        "_count",
        "_descriptor_floor",
        "_descriptor_warned_at",
        "_warned_at",
        "header_timeout",
        "max_per_peer",
    )

    def __init__(
        self,
        header_timeout: float,
        max_per_peer: int,
        descriptor_floor: int | None = None,
    ) -> None:
        self.header_timeout = header_timeout
        self.max_per_peer = max_per_peer  # 0: no cap
        self._count: dict[str, int] = {}
        self._warned_at: dict[str, float] = {}
        self._descriptor_floor = descriptor_floor
        self._descriptor_warned_at = float("-inf")

    def pending_count(self, peer: str | None = None) -> int:
        """Pending connections of `peer`, or of every peer (counted only with a cap)."""
        if peer is None:
            return sum(self._count.values())
        return self._count.get(peer, 0)

    def admit(
        self, transport: asyncio.Transport, peer: str | None, loop: asyncio.AbstractEventLoop
    ) -> PendingConnection | None:
        """Starts the pending state of a connection just made; None if it is refused (its
        transport is then aborted)."""
        if self._descriptor_floor is not None:
            self._check_descriptor(transport, loop)
        if self.max_per_peer and peer is not None:
            count = self._count.get(peer, 0)
            if count >= self.max_per_peer:
                self._warn_refused(peer, loop.time())
                transport.abort()
                return None
            self._count[peer] = count + 1
        else:
            peer = None  # not counted
        return PendingConnection(self, transport, peer, loop)

    def _release(self, peer: str) -> None:
        count = self._count[peer] - 1
        if count:
            self._count[peer] = count
        else:
            del self._count[peer]

    def _warn_refused(self, peer: str, now: float) -> None:
        warned_at = self._warned_at.get(peer)
        if warned_at is not None and now - warned_at < WARNING_INTERVAL:
            return
        if len(self._warned_at) >= _WARNED_PEERS_PRUNE_SIZE:
            self._warned_at = {
                p: t for p, t in self._warned_at.items() if now - t < WARNING_INTERVAL
            }
        self._warned_at[peer] = now
        logger.warning(
            "Too many pending connections from one address: new ones are closed",
            peer=peer,
            max_pending_connections_per_peer=self.max_per_peer,
        )

    def _check_descriptor(
        self, transport: asyncio.BaseTransport, loop: asyncio.AbstractEventLoop
    ) -> None:
        # Descriptors are allocated lowest first: getting number N means that all those
        # below N are open. When none is left, the event loop cannot accept connections
        # (uvloop accepts and closes them at once, asyncio stops accepting for a second),
        # silently with uvloop: this warning is the operator's only hint.
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is None or self._descriptor_floor is None:
            return
        fd = sock.fileno()
        if fd < self._descriptor_floor:
            return
        now = loop.time()
        if now - self._descriptor_warned_at < WARNING_INTERVAL:
            return
        self._descriptor_warned_at = now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        logger.warning(
            "File descriptors nearly exhausted: new connections are refused when none is "
            "left; raise the limit (`ulimit -n`, systemd `LimitNOFILE`)",
            descriptor=fd,
            limit=soft,
        )


class PendingConnection:
    """One connection while pending: its deadline and its place in the peer's count."""

    __slots__ = ("_limits", "_peer", "_timer", "_transport")

    def __init__(
        self,
        limits: PendingLimits,
        transport: asyncio.Transport,
        peer: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._limits = limits
        self._transport = transport
        self._peer = peer
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            limits.header_timeout, self._expire
        )

    def done(self) -> None:
        """The request is complete (or the connection is gone); idempotent."""
        timer = self._timer
        if timer is None:
            return
        self._timer = None
        timer.cancel()
        if self._peer is not None:
            self._limits._release(self._peer)

    def _expire(self) -> None:
        self.done()
        logger.debug("Request not complete in time: connection closed", peer=self._peer)
        # Nothing to flush, and a TLS close would wait for the (silent) peer's answer.
        self._transport.abort()


class LimitedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol, ending the pending state handed over by the HTTP
    protocol once the upgrade is answered."""

    pending: PendingConnection | None = None

    def start_keepalive(self) -> None:
        # uvicorn calls this once, right after writing the 101 answer: the upgrade is done.
        pending = self.pending
        if pending is not None:
            self.pending = None
            pending.done()
        super().start_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        pending = self.pending
        if pending is not None:
            self.pending = None
            pending.done()
        super().connection_lost(exc)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the pending connection limits. Use the subclass
    `http_protocol_class` makes for each server (it holds the server's `PendingLimits`)."""

    limits: ClassVar[PendingLimits]
    _pending: PendingConnection | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else None
        self._pending = self.limits.admit(transport, peer, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.done()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        pending = self._pending
        # An upgrade stays pending until the websocket protocol has answered it.
        if pending is not None and not (self.parser.should_upgrade() and self._should_upgrade()):
            self._pending = None
            pending.done()

    def handle_websocket_upgrade(self) -> None:
        pending = self._pending
        self._pending = None
        super().handle_websocket_upgrade()
        if pending is None:
            return
        protocol = self.transport.get_protocol()
        if (
            isinstance(protocol, LimitedWebSocketProtocol)
            and not protocol.disconnected
            and not protocol.handshake_complete
        ):
            protocol.pending = pending
        else:  # refused by the websocket layer (answered and closing), or not ours
            pending.done()


def http_protocol_class(limits: PendingLimits) -> type[LimitedHttpToolsProtocol]:
    """The HTTP protocol class of one server, bound to its limits."""

    class ServerHttpProtocol(LimitedHttpToolsProtocol):
        pass

    ServerHttpProtocol.limits = limits
    return ServerHttpProtocol
