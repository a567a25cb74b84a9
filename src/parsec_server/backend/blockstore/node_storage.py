"""Where a RAID node keeps its objects, so that a RAID set whose nodes would share one
storage is refused at start-up: every node writes its own data (RAID5: its chunk, RAID0: a
block) under the same key `<organization>/<block id>`, so nodes sharing a storage overwrite
each other and blocks read back corrupt or lost.

Two nodes share a storage when they are both `POSTGRESQL` (one `block_data` table in the
`--db` database), S3 nodes with the same endpoint (the region's AWS endpoint when none is
given) and bucket, Swift nodes with the same auth URL, tenant and container, or `file:`
nodes with the same directory (symbolic links resolved). URLs are compared without case in
the scheme and host, with the scheme's default port made explicit and without a trailing
`/`. `MOCKED` nodes each have their own memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import urlsplit

from parsec_server.backend.config import (
    FileBlockstoreConfig,
    MockedBlockstoreConfig,
    PostgreSQLBlockstoreConfig,
    RaidBlockstoreConfig,
    S3BlockstoreConfig,
    SingleBlockstoreConfig,
    StartupError,
    SwiftBlockstoreConfig,
)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_url(url: str) -> str:
    """`url` as `<scheme>://<host>:<port><path>`: scheme and host lowercase, the default
    port written, no credentials, no trailing `/`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a number: kept as written
        return f"{scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{parts.hostname or ''}:{port}{parts.path.rstrip('/')}"


def s3_endpoint(config: S3BlockstoreConfig) -> str:
    """The endpoint the node talks to: the configured one, else the region's AWS one."""
    return config.endpoint_url or f"https://s3.{config.region}.amazonaws.com"


def storage_key(node: SingleBlockstoreConfig) -> tuple[str, ...] | None:
    """Equal for two nodes that keep their objects in the same place; None for a node
    whose storage is its own whatever the other nodes are (`MOCKED`)."""
    match node:
        case MockedBlockstoreConfig():
            return None
        case PostgreSQLBlockstoreConfig():
            return ("POSTGRESQL",)
        case S3BlockstoreConfig():
            return ("S3", normalized_url(s3_endpoint(node)), node.bucket)
        case SwiftBlockstoreConfig():
            return ("SWIFT", normalized_url(node.auth_url), node.tenant, node.container)
        case FileBlockstoreConfig():
            return ("FILE", os.path.realpath(node.path))


def describe_storage(node: SingleBlockstoreConfig) -> str:
    """The storage of a node, for an operator (no credentials)."""
    match node:
        case MockedBlockstoreConfig():
            return "MOCKED"
        case PostgreSQLBlockstoreConfig():
            return "POSTGRESQL: the `block_data` table of the --db database"
        case S3BlockstoreConfig():
            return f"S3 bucket `{node.bucket}` at {s3_endpoint(node)}"
        case SwiftBlockstoreConfig():
            return (
                f"Swift container `{node.container}` of tenant `{node.tenant}` at {node.auth_url}"
            )
        case FileBlockstoreConfig():
            return f"block directory `{node.path}`"


def _enumeration(indexes: Sequence[int]) -> str:
    *first, last = (str(index) for index in indexes)
    return f"{', '.join(first)} and {last}"


def check_raid_nodes_distinct(config: RaidBlockstoreConfig) -> None:
    """StartupError (one line, naming the nodes) if two nodes of the set share a storage."""
    by_storage: dict[tuple[str, ...], list[int]] = {}
    for index, node in enumerate(config.nodes):
        key = storage_key(node)
        if key is not None:
            by_storage.setdefault(key, []).append(index)
    for indexes in by_storage.values():
        if len(indexes) > 1:
            raise StartupError(
                f"{config.mode} nodes {_enumeration(indexes)} use the same storage "
                f"({describe_storage(config.nodes[indexes[0]])}): "
                "each node needs a storage of its own"
            )
