"""Each blockstore's readiness probe (`check_ready`, shown by `GET /readyz`): S3 HeadBucket,
Swift HEAD container, PostgreSQL `SELECT 1`, RAID: every node, ready while the set can
still serve. Details never hold credentials."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.backend.blockstore.base import BlockStore
from parsec_server.backend.blockstore.memory import MemoryBlockStore
from parsec_server.backend.blockstore.postgresql import PostgreSQLBlockStore
from parsec_server.backend.blockstore.raid import (
    Raid0BlockStore,
    Raid1BlockStore,
    Raid5BlockStore,
)
from parsec_server.backend.blockstore.s3 import S3BlockStore
from parsec_server.backend.blockstore.swift import SwiftBlockStore
from parsec_server.backend.config import S3BlockstoreConfig, SwiftBlockstoreConfig
from parsec_server.backend.readiness import CheckOutcome, failed
from tests.backend.blockstore.conftest import (
    FAST_TIMEOUTS,
    REGION,
    SECRET_KEY,
    MotoFactory,
    S3Bucket,
)
from tests.backend.blockstore.swift_standin import SwiftStandIn

WITHIN = 2.0


class ProbeNode(MemoryBlockStore):
    """A node whose readiness the test sets."""

    def __init__(self, ok: bool = True) -> None:
        super().__init__()
        self.ok = ok

    async def check_ready(self, within: float) -> CheckOutcome:
        return CheckOutcome(True, {"type": "MOCKED"}) if self.ok else failed("down", type="X")


def assert_no_secret(outcome: CheckOutcome, *secrets: str) -> None:
    text = json.dumps(outcome.to_json())
    for secret in secrets:
        assert secret not in text


async def test_memory_store_is_ready() -> None:
    outcome = await MemoryBlockStore().check_ready(WITHIN)
    assert outcome.to_json() == {"ok": True, "type": "MOCKED"}


# --- RAID ----------------------------------------------------------------------------------


def raid_nodes(*oks: bool) -> list[BlockStore]:
    return [ProbeNode(ok) for ok in oks]


@pytest.mark.parametrize(
    ("store_class", "nodes_ok", "ready", "degraded"),
    [
        (Raid0BlockStore, (True, True), True, False),
        (Raid0BlockStore, (True, False), False, False),  # its blocks are unreachable
        (Raid1BlockStore, (True, True), True, False),
        (Raid1BlockStore, (False, True), True, True),  # reads served, creates fail
        (Raid1BlockStore, (False, False), False, False),
        (Raid5BlockStore, (True, True, True), True, False),
        (Raid5BlockStore, (True, False, True), True, True),  # rebuilt from parity
        (Raid5BlockStore, (True, True, False), True, True),  # the parity node
        (Raid5BlockStore, (False, True, False), False, False),
    ],
)
async def test_raid_is_ready_while_it_can_serve(
    store_class: type[Raid0BlockStore | Raid1BlockStore | Raid5BlockStore],
    nodes_ok: tuple[bool, ...],
    ready: bool,
    degraded: bool,
) -> None:
    store = store_class(raid_nodes(*nodes_ok))
    outcome = await store.check_ready(WITHIN)
    body = outcome.to_json()
    assert body["ok"] is ready
    assert body["degraded"] is degraded
    assert body["type"] == store_class.type_name
    assert [node["ok"] for node in body["nodes"]] == list(nodes_ok)
    if not all(nodes_ok):
        assert outcome.log_error is not None and "node" in outcome.log_error


async def test_raid_node_checks_run_concurrently() -> None:
    class SlowNode(ProbeNode):
        async def check_ready(self, within: float) -> CheckOutcome:
            await asyncio.sleep(0.3)
            return await super().check_ready(within)

    store = Raid5BlockStore([SlowNode(), SlowNode(), SlowNode()])
    started = time.monotonic()
    assert (await store.check_ready(WITHIN)).ok
    assert time.monotonic() - started < 0.8


# --- S3 -------------------------------------------------------------------------------------


async def test_s3_is_ready_when_the_bucket_answers(s3_bucket: S3Bucket) -> None:
    store = await S3BlockStore.start(s3_bucket.config, FAST_TIMEOUTS)
    try:
        outcome = await store.check_ready(WITHIN)
    finally:
        await store.close()
    assert outcome.to_json() == {"ok": True, "type": "S3"}


async def test_s3_bucket_gone_is_not_ready(s3_bucket: S3Bucket) -> None:
    store = await S3BlockStore.start(s3_bucket.config, FAST_TIMEOUTS)
    try:
        await s3_bucket.server.delete_bucket(s3_bucket.name)
        outcome = await store.check_ready(WITHIN)
    finally:
        await store.close()
    assert outcome.to_json() == {"ok": False, "error": "HTTP 404", "type": "S3"}
    assert outcome.log_error is not None and "HeadBucket" in outcome.log_error
    assert_no_secret(outcome, SECRET_KEY, s3_bucket.server.endpoint_url)


async def test_s3_down_is_not_ready_within_the_bound(moto_servers: MotoFactory) -> None:
    (server,) = moto_servers(1)
    await server.create_bucket("parsec")
    store = await S3BlockStore.start(server.config("parsec"))  # default timeouts
    try:
        server.stop()
        started = time.monotonic()
        outcome = await store.check_ready(1.0)
        assert time.monotonic() - started < 1.5
    finally:
        await store.close()
    assert outcome.ok is False
    assert_no_secret(outcome, SECRET_KEY, server.endpoint_url)


async def test_s3_silent_is_not_ready_within_the_bound(silent_server: int) -> None:
    config = S3BlockstoreConfig(f"http://127.0.0.1:{silent_server}", REGION, "parsec", "k", "s")
    store = await S3BlockStore.open(config)
    try:
        started = time.monotonic()
        outcome = await store.check_ready(0.5)
        assert time.monotonic() - started < 1.0
    finally:
        await store.close()
    assert outcome.to_json() == {"ok": False, "error": "timeout", "type": "S3"}


# --- Swift ----------------------------------------------------------------------------------


@pytest.fixture
def swift() -> Iterator[SwiftStandIn]:
    standin = SwiftStandIn("alice", "tenant1", "s3cr3t-swift", containers={"parsec"})
    standin.start()
    yield standin
    standin.stop()


def swift_config(standin: SwiftStandIn) -> SwiftBlockstoreConfig:
    return SwiftBlockstoreConfig(standin.auth_url, "tenant1", "parsec", "alice", "s3cr3t-swift")


async def test_swift_is_ready_when_the_container_answers(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(swift_config(swift), FAST_TIMEOUTS)
    try:
        swift.requests.clear()
        outcome = await store.check_ready(WITHIN)
    finally:
        await store.close()
    assert outcome.to_json() == {"ok": True, "type": "SWIFT"}
    assert ("HEAD", "/v1/AUTH_tenant1/parsec") in swift.requests


async def test_swift_failing_is_not_ready(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(swift_config(swift), FAST_TIMEOUTS)
    try:
        swift.failing = True
        outcome = await store.check_ready(WITHIN)
    finally:
        await store.close()
    assert outcome.to_json() == {"ok": False, "error": "HTTP 503", "type": "SWIFT"}
    assert_no_secret(outcome, "s3cr3t-swift", swift.auth_url, swift.token)


async def test_swift_down_is_not_ready_within_the_bound(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(swift_config(swift), FAST_TIMEOUTS)
    try:
        swift.stop()
        started = time.monotonic()
        outcome = await store.check_ready(1.0)
        assert time.monotonic() - started < 1.5
    finally:
        await store.close()
    assert outcome.ok is False
    assert_no_secret(outcome, "s3cr3t-swift", swift.auth_url)


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
async def pool(migrated_postgresql_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_postgresql_url, min_size=1, max_size=1)
    try:
        yield pool
    finally:
        await pool.close()


async def test_postgresql_store_is_ready_when_the_database_answers(pool: asyncpg.Pool) -> None:
    outcome = await PostgreSQLBlockStore(pool).check_ready(WITHIN)
    assert outcome.to_json() == {"ok": True, "type": "POSTGRESQL"}


async def test_postgresql_store_without_a_free_connection_is_not_ready_in_time(
    pool: asyncpg.Pool,
) -> None:
    store = PostgreSQLBlockStore(pool)
    async with pool.acquire():  # the only one
        started = time.monotonic()
        outcome = await store.check_ready(0.3)
        assert time.monotonic() - started < 1.0
    assert outcome.to_json() == {"ok": False, "error": "timeout", "type": "POSTGRESQL"}
