"""What the network blockstores (S3, Swift) share: time bounds and failure descriptions.

Every call to a remote store is bounded: a store that is down, refuses connections, or
accepts them and then stays silent makes the command answer `timeout` within a few
seconds instead of holding the client (protocol/50-block-blockstore.md section 6).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

logger = structlog.get_logger("parsec.blockstore")


@dataclass(frozen=True, slots=True)
class RemoteTimeouts:
    connect: float = 3.0  # seconds to open a connection (TCP and TLS)
    read: float = 5.0  # seconds without a byte from the store while waiting for an answer
    attempts: int = 2  # tries of one request (a failed connection or a 5xx is retried once)
    operation: float = 10.0  # hard ceiling of one create/read, all requests and retries included


DEFAULT_TIMEOUTS = RemoteTimeouts()


def object_key(organization_id: str, block_id: uuid.UUID) -> str:
    """`<organization_id>/<block uuid, lowercase with hyphens>` (S3 key, Swift object name)."""
    return f"{organization_id}/{block_id}"


def one_line(exc: BaseException) -> str:
    """An exception as a single line (start-up errors are shown as `Error: <line>`)."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text


def log_unavailable(store: str, operation: str, key: str, exc: BaseException) -> None:
    logger.warning(
        "blockstore unavailable",
        store=store,
        operation=operation,
        key=key,
        error=f"{type(exc).__name__}: {one_line(exc)}",
    )
