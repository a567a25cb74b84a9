"""The Swift blockstore (python-swiftclient in threads) against `SwiftStandIn`.

The endpoint is a stand-in written for these tests (see swift_standin.py): no Swift server
can run here. It speaks real HTTP on loopback, with auth v1.0, so the client library, its
authentication, object naming and error handling are exercised for real.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from parsec_server.backend.blockstore.base import BlockStoreBadOutcome
from parsec_server.backend.blockstore.remote import RemoteTimeouts
from parsec_server.backend.blockstore.swift import SwiftBlockStore
from parsec_server.backend.config import StartupError, SwiftBlockstoreConfig
from tests.backend.blockstore.conftest import FAST_TIMEOUTS
from tests.backend.blockstore.swift_standin import SwiftStandIn

ORG = "MyOrg"
BLOCK_ID = uuid.UUID("0f3c2b1a-1111-4222-8333-444455556666")


@pytest.fixture
def swift() -> Iterator[SwiftStandIn]:
    standin = SwiftStandIn("alice", "tenant1", "s3cr3t", containers={"parsec"})
    standin.start()
    yield standin
    standin.stop()


def config_for(
    standin: SwiftStandIn,
    tenant: str = "tenant1",
    container: str = "parsec",
    password: str = "s3cr3t",
) -> SwiftBlockstoreConfig:
    return SwiftBlockstoreConfig(standin.auth_url, tenant, container, "alice", password)


async def test_create_then_read(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(config_for(swift), FAST_TIMEOUTS)
    try:
        data = bytes(range(256)) * 4096
        assert await store.create(ORG, BLOCK_ID, data) is None
        assert await store.read(ORG, BLOCK_ID) == data
        empty_id = uuid.uuid4()
        assert await store.create(ORG, empty_id, b"") is None
        assert await store.read(ORG, empty_id) == b""
    finally:
        await store.close()
    # Object `<organization>/<uuid>` in the container; auth v1.0 with `<user>:<tenant>`.
    assert swift.objects["parsec", f"MyOrg/{BLOCK_ID}"] == data
    assert ("GET", "/auth/v1.0") in swift.requests
    assert ("HEAD", "/v1/AUTH_tenant1/parsec") in swift.requests


async def test_create_overwrites_what_an_earlier_create_stored(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(config_for(swift), FAST_TIMEOUTS)
    try:
        assert await store.create(ORG, BLOCK_ID, b"first attempt") is None
        assert await store.create(ORG, BLOCK_ID, b"retry") is None
        assert await store.read(ORG, BLOCK_ID) == b"retry"
    finally:
        await store.close()


async def test_delete_removes_the_object_and_a_missing_one_is_fine(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(config_for(swift), FAST_TIMEOUTS)
    try:
        assert await store.create(ORG, BLOCK_ID, b"data") is None
        assert await store.delete(ORG, BLOCK_ID) is None
        assert ("parsec", f"{ORG}/{BLOCK_ID}") not in swift.objects
        assert await store.read(ORG, BLOCK_ID) is BlockStoreBadOutcome.NOT_FOUND
        assert await store.delete(ORG, BLOCK_ID) is None
    finally:
        await store.close()


async def test_read_missing_block_is_not_found(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(config_for(swift), FAST_TIMEOUTS)
    try:
        assert await store.read(ORG, uuid.uuid4()) is BlockStoreBadOutcome.NOT_FOUND
        assert await store.read(ORG, uuid.uuid4()) is BlockStoreBadOutcome.NOT_FOUND
    finally:
        await store.close()
    # One authentication: the connection (and its token) is reused after a 404.
    assert swift.requests.count(("GET", "/auth/v1.0")) == 1


async def test_concurrent_calls(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(config_for(swift), FAST_TIMEOUTS)
    try:
        ids = [uuid.uuid4() for _ in range(20)]
        outcomes = await asyncio.gather(*(store.create(ORG, i, i.bytes) for i in ids))
        assert outcomes == [None] * len(ids)
        assert await asyncio.gather(*(store.read(ORG, i) for i in ids)) == [i.bytes for i in ids]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"password": "wrong"}, "401"),
        ({"tenant": "other"}, "401"),
        ({"container": "missing"}, "404"),
    ],
)
async def test_start_fails_when_unusable(
    swift: SwiftStandIn, overrides: dict[str, str], detail: str
) -> None:
    with pytest.raises(StartupError) as exc_info:
        await SwiftBlockStore.start(config_for(swift, **overrides), FAST_TIMEOUTS)
    message = str(exc_info.value)
    assert "\n" not in message
    assert message.startswith("Cannot use Swift container")
    assert detail in message


async def test_start_fails_on_unreachable_endpoint() -> None:
    config = SwiftBlockstoreConfig("http://127.0.0.1:1/auth/v1.0", "t", "c", "u", "p")
    started = time.monotonic()
    with pytest.raises(StartupError):
        await SwiftBlockStore.start(config, FAST_TIMEOUTS)
    assert time.monotonic() - started < 5


async def test_failing_store_is_unavailable(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(config_for(swift), FAST_TIMEOUTS)
    try:
        assert await store.create(ORG, BLOCK_ID, b"data") is None
        swift.failing = True  # 503 to everything
        started = time.monotonic()
        assert await store.read(ORG, BLOCK_ID) is BlockStoreBadOutcome.UNAVAILABLE
        assert await store.create(ORG, uuid.uuid4(), b"x") is BlockStoreBadOutcome.UNAVAILABLE
        assert await store.delete(ORG, BLOCK_ID) is BlockStoreBadOutcome.UNAVAILABLE
        assert time.monotonic() - started < 5
        swift.failing = False
        assert await store.read(ORG, BLOCK_ID) == b"data"
    finally:
        await store.close()


async def test_store_down_is_unavailable_quickly(swift: SwiftStandIn) -> None:
    store = await SwiftBlockStore.start(config_for(swift), FAST_TIMEOUTS)
    try:
        assert await store.create(ORG, BLOCK_ID, b"data") is None
        swift.stop()
        started = time.monotonic()
        assert await store.read(ORG, BLOCK_ID) is BlockStoreBadOutcome.UNAVAILABLE
        assert await store.create(ORG, uuid.uuid4(), b"x") is BlockStoreBadOutcome.UNAVAILABLE
        assert time.monotonic() - started < 5
    finally:
        await store.close()


async def test_silent_store_is_unavailable_within_bounds(silent_server: int) -> None:
    config = SwiftBlockstoreConfig(
        f"http://127.0.0.1:{silent_server}/auth/v1.0", "t", "c", "u", "p"
    )
    timeouts = RemoteTimeouts(connect=0.3, read=0.3, attempts=2, operation=5.0)
    store = SwiftBlockStore(config, timeouts)  # not started: no request made yet
    try:
        started = time.monotonic()
        assert await store.read(ORG, BLOCK_ID) is BlockStoreBadOutcome.UNAVAILABLE
        assert await store.create(ORG, BLOCK_ID, b"x") is BlockStoreBadOutcome.UNAVAILABLE
        assert time.monotonic() - started < 3
    finally:
        await store.close()
