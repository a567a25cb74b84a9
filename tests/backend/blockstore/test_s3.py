"""The S3 blockstore against a real S3 server (moto's) over HTTPS with a private CA."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from parsec_server.backend.blockstore.base import BlockStoreBadOutcome
from parsec_server.backend.blockstore.remote import RemoteTimeouts
from parsec_server.backend.blockstore.s3 import S3BlockStore
from parsec_server.backend.config import S3BlockstoreConfig, StartupError
from tests.backend.blockstore.conftest import (
    ACCESS_KEY,
    FAST_TIMEOUTS,
    REGION,
    MotoFactory,
    S3Bucket,
)

ORG = "MyOrg"
BLOCK_ID = uuid.UUID("0f3c2b1a-1111-4222-8333-444455556666")


async def test_create_then_read(s3_bucket: S3Bucket) -> None:
    store = await S3BlockStore.start(s3_bucket.config)
    try:
        data = bytes(range(256)) * 4096  # 1 MiB, the largest block the protocol carries
        assert await store.create(ORG, BLOCK_ID, data) is None
        assert await store.read(ORG, BLOCK_ID) == data
        empty_id = uuid.uuid4()
        assert await store.create(ORG, empty_id, b"") is None
        assert await store.read(ORG, empty_id) == b""
    finally:
        await store.close()


async def test_object_key_is_organization_slash_uuid(s3_bucket: S3Bucket) -> None:
    store = await S3BlockStore.start(s3_bucket.config)
    try:
        assert await store.create(ORG, BLOCK_ID, b"some data") is None
        assert await store.create("Org2", BLOCK_ID, b"other organization") is None
    finally:
        await store.close()
    assert await s3_bucket.keys() == [
        "MyOrg/0f3c2b1a-1111-4222-8333-444455556666",
        "Org2/0f3c2b1a-1111-4222-8333-444455556666",
    ]
    assert await s3_bucket.get_object(f"MyOrg/{BLOCK_ID}") == b"some data"


async def test_path_style_url_signed_v4_with_the_region(s3_bucket: S3Bucket) -> None:
    store = await S3BlockStore.start(s3_bucket.config)
    try:
        url: str = await store._client.generate_presigned_url(
            "get_object", Params={"Bucket": s3_bucket.name, "Key": f"Org1/{BLOCK_ID}"}
        )
    finally:
        await store.close()
    assert url.startswith(f"{s3_bucket.server.endpoint_url}/{s3_bucket.name}/Org1/{BLOCK_ID}?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert f"X-Amz-Credential={ACCESS_KEY}%2F" in url
    assert f"%2F{REGION}%2Fs3%2Faws4_request" in url


async def test_create_overwrites_what_an_earlier_create_stored(s3_bucket: S3Bucket) -> None:
    store = await S3BlockStore.start(s3_bucket.config)
    try:
        assert await store.create(ORG, BLOCK_ID, b"first attempt") is None
        assert await store.create(ORG, BLOCK_ID, b"retry") is None
        assert await store.read(ORG, BLOCK_ID) == b"retry"
        assert await s3_bucket.keys() == [f"{ORG}/{BLOCK_ID}"]
    finally:
        await store.close()


async def test_delete_removes_the_object_and_a_missing_one_is_fine(s3_bucket: S3Bucket) -> None:
    store = await S3BlockStore.start(s3_bucket.config)
    try:
        assert await store.create(ORG, BLOCK_ID, b"data") is None
        assert await store.delete(ORG, BLOCK_ID) is None
        assert await store.read(ORG, BLOCK_ID) is BlockStoreBadOutcome.NOT_FOUND
        assert await s3_bucket.keys() == []
        assert await store.delete(ORG, BLOCK_ID) is None
    finally:
        await store.close()


async def test_read_missing_block_is_not_found(s3_bucket: S3Bucket) -> None:
    store = await S3BlockStore.start(s3_bucket.config)
    try:
        assert await store.read(ORG, uuid.uuid4()) is BlockStoreBadOutcome.NOT_FOUND
        # Same block id, other organization: another key.
        assert await store.create(ORG, BLOCK_ID, b"data") is None
        assert await store.read("Org2", BLOCK_ID) is BlockStoreBadOutcome.NOT_FOUND
    finally:
        await store.close()


async def test_start_fails_on_missing_bucket(s3_bucket: S3Bucket) -> None:
    config = s3_bucket.server.config("no-such-bucket")
    with pytest.raises(StartupError) as exc_info:
        await S3BlockStore.start(config, FAST_TIMEOUTS)
    message = str(exc_info.value)
    assert "\n" not in message
    assert message.startswith(
        f"Cannot use S3 bucket `no-such-bucket` at {s3_bucket.server.endpoint_url}: "
    )
    assert "404" in message


async def test_start_fails_on_unreachable_endpoint(s3_bucket: S3Bucket) -> None:
    config = S3BlockstoreConfig("https://127.0.0.1:1", REGION, "parsec", "key", "secret")
    started = time.monotonic()
    with pytest.raises(StartupError) as exc_info:
        await S3BlockStore.start(config, FAST_TIMEOUTS)
    assert time.monotonic() - started < 5
    assert "\n" not in str(exc_info.value)
    assert "Could not connect to the endpoint URL" in str(exc_info.value)


async def test_start_fails_on_untrusted_certificate(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The system CAs do not know our private CA: the TLS handshake fails.
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    with pytest.raises(StartupError) as exc_info:
        await S3BlockStore.start(s3_bucket.config, FAST_TIMEOUTS)
    assert "\n" not in str(exc_info.value)
    assert "SSL" in str(exc_info.value)


async def test_ca_bundle_is_read_from_the_environment(
    s3_bucket: S3Bucket, aws_ca_bundle: Path
) -> None:
    import os

    assert os.environ["AWS_CA_BUNDLE"] == str(aws_ca_bundle)
    store = await S3BlockStore.start(s3_bucket.config)  # HTTPS accepted thanks to it
    await store.close()


async def test_store_down_answers_unavailable_quickly(moto_servers: MotoFactory) -> None:
    (server,) = moto_servers(1)
    await server.create_bucket("parsec")
    store = await S3BlockStore.start(server.config("parsec"))  # default timeouts
    try:
        assert await store.create(ORG, BLOCK_ID, b"data") is None
        server.stop()
        started = time.monotonic()
        assert await store.read(ORG, BLOCK_ID) is BlockStoreBadOutcome.UNAVAILABLE
        assert await store.create(ORG, uuid.uuid4(), b"x") is BlockStoreBadOutcome.UNAVAILABLE
        assert await store.delete(ORG, BLOCK_ID) is BlockStoreBadOutcome.UNAVAILABLE
        assert time.monotonic() - started < 8  # three operations, each a second or two at most
    finally:
        await store.close()


async def test_silent_store_answers_unavailable_within_bounds(silent_server: int) -> None:
    silent = S3BlockstoreConfig(
        f"http://127.0.0.1:{silent_server}", REGION, "parsec", "key", "secret"
    )
    # The read timeout, retried once, ends each call well before the operation ceiling.
    timeouts = RemoteTimeouts(connect=0.3, read=0.3, attempts=2, operation=5.0)
    store = await S3BlockStore.open(silent, timeouts)
    try:
        for operation in (store.read(ORG, BLOCK_ID), store.create(ORG, BLOCK_ID, b"data")):
            started = time.monotonic()
            assert await operation is BlockStoreBadOutcome.UNAVAILABLE
            assert time.monotonic() - started < 2.5
    finally:
        await store.close()


async def test_operation_ceiling_bounds_slow_stores(silent_server: int) -> None:
    timeouts = RemoteTimeouts(connect=5.0, read=30.0, attempts=3, operation=1.0)
    silent = S3BlockstoreConfig(
        f"http://127.0.0.1:{silent_server}", REGION, "parsec", "key", "secret"
    )
    started = time.monotonic()
    with pytest.raises(StartupError) as exc_info:
        await S3BlockStore.start(silent, timeouts)
    assert time.monotonic() - started < 3
    assert str(exc_info.value) == (
        f"Cannot use S3 bucket `parsec` at http://127.0.0.1:{silent_server}: no answer within 1 s"
    )
