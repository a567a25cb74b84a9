"""Amazon S3 or a compatible store (`s3:<endpoint>:<region>:<bucket>:<key>:<secret>`),
protocol/50-block-blockstore.md section 5.1.

One aiobotocore client for the server's lifetime (its connection pool is reused by every
request), closed by `close()`. Requests are signed with SigV4 for the configured region;
a custom endpoint is addressed path-style (`<endpoint>/<bucket>/<key>`). The SDK's
environment chain applies, notably `AWS_CA_BUNDLE` for an HTTPS endpoint with a private CA.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiobotocore.config import AioConfig  # type: ignore[import-untyped, unused-ignore]
from aiobotocore.session import get_session  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import ClientError  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.remote import (
    DEFAULT_TIMEOUTS,
    RemoteTimeouts,
    log_unavailable,
    object_key,
    one_line,
)
from parsec_server.backend.config import S3BlockstoreConfig, StartupError

# Error codes meaning "no such object": HeadObject has no body, so only its status code
# (`404`); GetObject says `NoSuchKey`. A missing *bucket* (`NoSuchBucket`) is a broken
# store, not a missing block.
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

# Connections kept open to the endpoint, shared by all the server's concurrent requests.
MAX_POOL_CONNECTIONS = 50


def _is_not_found(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code")
    return code in _NOT_FOUND_CODES


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return one_line(Exception(f"{error.get('Code', status)} {error.get('Message', '')}"))
    return one_line(exc)


def _where(config: S3BlockstoreConfig) -> str:
    where = f"S3 bucket `{config.bucket}`"
    if config.endpoint_url:
        where += f" at {config.endpoint_url}"
    return where


def client_config(endpoint_url: str | None, timeouts: RemoteTimeouts) -> Any:
    return AioConfig(
        signature_version="s3v4",
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
        retries={"mode": "standard", "total_max_attempts": timeouts.attempts},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        # Path-style with a custom endpoint (`<endpoint>/<bucket>/<key>`), AWS's own
        # choice (virtual-hosted) otherwise.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # No checksum trailers the reference's SDK never sent: many S3-compatible servers
        # refuse them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class S3BlockStore(BlockStore):
    def __init__(self, client: Any, bucket: str, timeouts: RemoteTimeouts) -> None:
        self._client = client
        self._bucket = bucket
        self._timeouts = timeouts
        self._closed = False

    @classmethod
    async def start(
        cls, config: S3BlockstoreConfig, timeouts: RemoteTimeouts = DEFAULT_TIMEOUTS
    ) -> S3BlockStore:
        """Open the client and check the bucket (HeadBucket); StartupError if unusable."""
        store = await cls.open(config, timeouts)
        try:
            async with asyncio.timeout(timeouts.operation):
                await store._client.head_bucket(Bucket=config.bucket)
        except Exception as exc:
            await store.close()
            problem = _describe(exc)
            if isinstance(exc, TimeoutError):
                problem = f"no answer within {timeouts.operation:g} s"
            raise StartupError(f"Cannot use {_where(config)}: {problem}") from exc
        return store

    @classmethod
    async def open(
        cls, config: S3BlockstoreConfig, timeouts: RemoteTimeouts = DEFAULT_TIMEOUTS
    ) -> S3BlockStore:
        """Open the client without any request (`start` checks the bucket too)."""
        try:
            client = await (
                get_session()
                .create_client(
                    "s3",
                    region_name=config.region,
                    endpoint_url=config.endpoint_url,
                    aws_access_key_id=config.key,
                    aws_secret_access_key=config.secret,
                    config=client_config(config.endpoint_url, timeouts),
                )
                .__aenter__()
            )
        except Exception as exc:  # bad endpoint URL or region, unreadable CA bundle...
            raise StartupError(f"Cannot use {_where(config)}: {one_line(exc)}") from exc
        return cls(client, config.bucket, timeouts)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        key = object_key(organization_id, block_id)
        try:
            async with asyncio.timeout(self._timeouts.operation):
                try:
                    await self._client.head_object(Bucket=self._bucket, Key=key)
                except ClientError as exc:
                    if not _is_not_found(exc):
                        raise
                else:
                    return None  # already stored (a retried create): never overwritten
                await self._client.put_object(Bucket=self._bucket, Key=key, Body=data)
        except Exception as exc:  # any failure of the store is the `timeout` reply
            log_unavailable("s3", "create", key, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        key = object_key(organization_id, block_id)
        try:
            async with asyncio.timeout(self._timeouts.operation):
                response = await self._client.get_object(Bucket=self._bucket, Key=key)
                async with response["Body"] as body:
                    data = await body.read()
        except ClientError as exc:
            if _is_not_found(exc):
                return BlockStoreBadOutcome.NOT_FOUND
            log_unavailable("s3", "read", key, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        except Exception as exc:
            log_unavailable("s3", "read", key, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return bytes(data)
