"""Builds the configured blockstore, for the server's lifetime.

`async with blockstore_factory(config, pool) as blockstore:` starts the store (S3 and
Swift check their bucket/container: StartupError, with a one-line message, if they
cannot be used, and the server does not start) and closes it (its connections) at exit.
A RAID set is refused before any node starts if two of its nodes share a storage.
With monitoring on, every store (each RAID node, and the set) reports its calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from parsec_server.backend.blockstore.base import BlockStore
from parsec_server.backend.blockstore.measured import MeasuredBlockStore
from parsec_server.backend.blockstore.memory import MemoryBlockStore
from parsec_server.backend.blockstore.node_storage import check_raid_nodes_distinct
from parsec_server.backend.blockstore.remote import DEFAULT_TIMEOUTS, RemoteTimeouts
from parsec_server.backend.config import (
    BlockstoreConfig,
    FileBlockstoreConfig,
    MockedBlockstoreConfig,
    PostgreSQLBlockstoreConfig,
    RaidBlockstoreConfig,
    S3BlockstoreConfig,
    SingleBlockstoreConfig,
    StartupError,
    SwiftBlockstoreConfig,
)
from parsec_server.backend.metrics import NULL_METRICS, Metrics


@contextlib.asynccontextmanager
async def blockstore_factory(
    config: BlockstoreConfig,
    postgresql_pool: Any | None,
    timeouts: RemoteTimeouts = DEFAULT_TIMEOUTS,
    metrics: Metrics = NULL_METRICS,
) -> AsyncIterator[BlockStore]:
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(config, RaidBlockstoreConfig):
            yield await _start_raid(config, postgresql_pool, timeouts, stack, metrics)
        else:
            yield await _start_single(config, postgresql_pool, timeouts, stack, metrics)


def _measured(store: BlockStore, type_name: str, metrics: Metrics) -> BlockStore:
    if not metrics.enabled:
        return store
    backend = "memory" if type_name == "MOCKED" else type_name.lower()
    return MeasuredBlockStore(store, backend, metrics)


async def _start_raid(
    config: RaidBlockstoreConfig,
    postgresql_pool: Any | None,
    timeouts: RemoteTimeouts,
    stack: contextlib.AsyncExitStack,
    metrics: Metrics,
) -> BlockStore:
    from parsec_server.backend.blockstore.raid import (
        Raid0BlockStore,
        Raid1BlockStore,
        Raid5BlockStore,
    )

    if config.mode == "RAID5" and len(config.nodes) < 3:
        raise StartupError("RAID5 block store needs at least 3 nodes")
    check_raid_nodes_distinct(config)
    nodes: list[BlockStore] = []
    for index, node_config in enumerate(config.nodes):
        try:
            nodes.append(
                await _start_single(node_config, postgresql_pool, timeouts, stack, metrics)
            )
        except StartupError as exc:
            raise StartupError(f"{config.mode} node {index}: {exc}") from exc
    # Each node is closed by the exit stack (also when a later node fails to start).
    raid: BlockStore
    match config.mode:
        case "RAID0":
            raid = Raid0BlockStore(nodes)
        case "RAID1":
            raid = Raid1BlockStore(nodes)
        case "RAID5":
            raid = Raid5BlockStore(nodes)
    return _measured(raid, config.mode, metrics)


async def _start_single(
    config: SingleBlockstoreConfig,
    postgresql_pool: Any | None,
    timeouts: RemoteTimeouts,
    stack: contextlib.AsyncExitStack,
    metrics: Metrics,
) -> BlockStore:
    store: BlockStore
    match config:
        case MockedBlockstoreConfig():
            store = MemoryBlockStore()
        case PostgreSQLBlockstoreConfig():
            if postgresql_pool is None:
                raise StartupError("PostgreSQL block store is not available")
            from parsec_server.backend.blockstore.postgresql import PostgreSQLBlockStore

            store = PostgreSQLBlockStore(postgresql_pool, timeouts.operation)
        case S3BlockstoreConfig():
            from parsec_server.backend.blockstore.s3 import S3BlockStore

            store = await S3BlockStore.start(config, timeouts)
        case SwiftBlockstoreConfig():
            from parsec_server.backend.blockstore.swift import SwiftBlockStore

            store = await SwiftBlockStore.start(config, timeouts)
        case FileBlockstoreConfig():
            from parsec_server.backend.blockstore.blockdir import BlockDirectory
            from parsec_server.backend.blockstore.file import FileBlockStore

            store = await FileBlockStore.start(BlockDirectory(config.path), timeouts.operation)
    stack.push_async_callback(store.close)
    return _measured(store, config.type_name, metrics)
