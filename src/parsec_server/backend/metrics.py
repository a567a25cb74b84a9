"""What the server tells its monitoring: the interface domain code reports through.

Domain modules never import a metrics library: they call a `Metrics` object handed to
them at construction. With monitoring off (no `--metrics-address`) that object is
`NULL_METRICS`, whose methods do nothing, and the per-command measurement is not even
installed (`enabled` is False). The Prometheus implementation lives with the transport
(`backend/asgi/metrics.py`); the metrics it exposes are listed in docs/deployment.md.

Every label value passed here comes from a small fixed set (never an organization, user
or device id).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from parsec_server.backend.client_context import ClientContext
    from parsec_server.backend.events import Event

# A command handler, as the transport's command tables hold it.
CommandHandler = Callable[[Any, Any], Awaitable[dict[str, Any]]]

# Handshake outcomes besides the protocol's own results (`HandshakeResult` values).
HANDSHAKE_TIMEOUT = "timeout"

BlockstoreOperation = Literal["create", "read", "delete"]
BlockstoreResult = Literal["ok", "not_found", "unavailable", "error"]
EmailResult = Literal["sent", "failed", "mocked"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A database connection pool right now."""

    in_use: int  # connections lent to a query or transaction
    idle: int  # open connections waiting in the pool
    waiting: int  # acquisitions waiting for a connection
    max_size: int


class Metrics(Protocol):
    """What is measured. Methods are called where the thing happens; none may fail."""

    @property
    def enabled(self) -> bool:
        """False: nothing is measured (the hot paths skip their measurement altogether)."""
        ...

    # Connections (the transport).
    def connection_opened(self) -> None:
        """A websocket connection is accepted (its handshake is not done yet)."""

    def connection_identified(self, client: ClientContext) -> None:
        """Its handshake succeeded: it is now a connection of that kind."""

    def connection_closed(self, client: ClientContext | None) -> None:
        """It ended (`client` None: before a successful handshake)."""

    def connection_closed_by_server(self, code: int) -> None:
        """The server closed a connection with this websocket close code."""

    def handshake_done(self, result: str) -> None:
        """A `HandshakeResult` value, or `HANDSHAKE_TIMEOUT`."""

    def instrument_command(
        self, name: str, handler: CommandHandler, *, waits: bool
    ) -> CommandHandler:
        """The handler of command `name`, measured (only called when `enabled`). `waits`:
        the command waits for something else (events, a peer), its duration is no
        latency."""
        ...

    def request_refused(self, status: str) -> None:
        """A request was answered without reaching its command (unknown command, invalid
        message, profile not allowed...)."""

    # Events.
    def event_sent(self, event: Event) -> None:
        """This process published an event."""

    def event_delivered(self, event_name: str) -> None:
        """An event was handed to a client (`events_listen` reply)."""

    # Storage and outside services.
    def blockstore_call(
        self,
        backend: str,
        operation: BlockstoreOperation,
        result: BlockstoreResult,
        seconds: float,
    ) -> None:
        """`backend`: `BlockstoreConfig.type_name` lowercased (memory, postgresql, s3,
        swift, file, raid0, raid1, raid5)."""

    def email_sent(self, result: EmailResult) -> None: ...

    def watching_pool(
        self, stats: Callable[[], PoolStats]
    ) -> contextlib.AbstractContextManager[None]:
        """For its duration, the database pool is read through `stats` (a cheap call,
        made from time to time)."""
        ...


class NullMetrics:
    """Monitoring off: every call does nothing."""

    enabled = False

    def connection_opened(self) -> None:
        pass

    def connection_identified(self, client: ClientContext) -> None:
        pass

    def connection_closed(self, client: ClientContext | None) -> None:
        pass

    def connection_closed_by_server(self, code: int) -> None:
        pass

    def handshake_done(self, result: str) -> None:
        pass

    def instrument_command(
        self, name: str, handler: CommandHandler, *, waits: bool
    ) -> CommandHandler:
        return handler

    def request_refused(self, status: str) -> None:
        pass

    def event_sent(self, event: Event) -> None:
        pass

    def event_delivered(self, event_name: str) -> None:
        pass

    def blockstore_call(
        self,
        backend: str,
        operation: BlockstoreOperation,
        result: BlockstoreResult,
        seconds: float,
    ) -> None:
        pass

    def email_sent(self, result: EmailResult) -> None:
        pass

    @contextlib.contextmanager
    def watching_pool(self, stats: Callable[[], PoolStats]) -> Iterator[None]:
        yield


NULL_METRICS: Metrics = NullMetrics()
