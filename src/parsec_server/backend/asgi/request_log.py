"""One INFO line per request (docs/logging.md): each command of a websocket connection, each
plain HTTP request. Never a payload, token or key: what is known of the peer comes from
`loggable`, plus its IP address (after the proxy headers, asgi/proxy.py).

Cost: with the default `--log-level WARNING` a command pays one cached level check (under
0.1 µs). With INFO, the fields known for the whole connection (peer, organization, device)
are bound once, at its first command; each line then costs the structlog and standard
library path to the log handler (docs/logging.md gives measured figures).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import structlog

from parsec_server.backend.asgi.proxy import peer_address
from parsec_server.backend.client_context import ClientContext, loggable

LOGGER_NAME = "parsec.request"
logger = structlog.get_logger(LOGGER_NAME)
_level_check = logging.getLogger(LOGGER_NAME)
_MAX_PATH_LENGTH = 200


def enabled() -> bool:
    """Whether request lines are logged (the standard library caches the answer until the
    levels change)."""
    return _level_check.isEnabledFor(logging.INFO)


def _new_id() -> str:
    return secrets.token_hex(4)


class ConnectionLog:
    """The request lines of one websocket connection: `request_id` is the connection's
    random id and the command's number on it (`3fa9c2d1-17`)."""

    __slots__ = ("_bound", "_fields", "_seq", "connection_id")

    def __init__(self, address: str | None) -> None:
        self.connection_id = _new_id()
        self._seq = 0
        self._fields: dict[str, Any] = {"peer_address": address, **loggable(None)}
        self._bound: Any = None  # a structlog logger holding `_fields`, made at first use

    def identified(self, client: ClientContext) -> None:
        """The handshake told who the peer is."""
        self._fields = {"peer_address": self._fields["peer_address"], **loggable(client)}
        self._bound = None

    def context(self) -> dict[str, Any]:
        """What other log lines of this connection may carry to be matched with its
        request lines."""
        return {"connection": self.connection_id, **self._fields}

    def command(self, cmd: str | None, status: object, started: float) -> None:
        """Logs one command (call only when `enabled()`); `started` is a `perf_counter`
        reading taken before it ran."""
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        self._seq += 1
        bound = self._bound
        if bound is None:
            bound = self._bound = logger.bind(**self._fields)
        bound.info(
            "Request",  # the reference's event name (`--log-filter` patterns keep working)
            request_id=f"{self.connection_id}-{self._seq}",
            cmd=cmd,
            status=status,
            duration_ms=duration_ms,
        )


def http_request(
    scope: Mapping[str, Any], method: str, path: str, status: int, started: float
) -> None:
    """Logs one plain HTTP request (call only when `enabled()`): its path without the query
    string (invitation links carry their token there)."""
    if len(path) > _MAX_PATH_LENGTH:
        path = path[:_MAX_PATH_LENGTH] + "..."
    logger.info(
        "HTTP request",
        request_id=f"{_new_id()}-1",
        peer_address=peer_address(scope),
        scheme=scope.get("scheme"),
        method=method,
        path=path,
        status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
    )
