"""Amazon S3 or a compatible store (`s3:<endpoint>:<region>:<bucket>:<key>:<secret>`),
protocol/50-block-blockstore.md section 5.1.

The hot calls (PutObject of `create`, GetObject of `read`, and DeleteObject of `delete`)
are plain HTTP requests signed by our own SigV4 signer (`sigv4.py`) over one
`aiohttp.ClientSession` kept for the server's lifetime (its connection pool is reused by
every request): only the status code and the body of the answers are looked at. `create`
overwrites an existing object (the reference looked first, with HeadObject, and kept it).
Objects are addressed path-style, `<endpoint>/<bucket>/<key>`, the endpoint being
`https://s3.<region>.amazonaws.com` when none is configured. The start-up check
(HeadBucket) goes through an aiobotocore client, kept open as well. Both trust the same
CAs: `AWS_CA_BUNDLE` if set, else the bundle botocore uses (certifi's).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import ssl
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl
from aiobotocore.config import AioConfig  # type: ignore[import-untyped, unused-ignore]
from aiobotocore.session import get_session  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import ClientError  # type: ignore[import-untyped, unused-ignore]
from botocore.httpsession import (  # type: ignore[import-untyped, unused-ignore]
    get_cert_path,
)

from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.node_storage import s3_endpoint
from parsec_server.backend.blockstore.remote import (
    DEFAULT_TIMEOUTS,
    RemoteTimeouts,
    log_unavailable,
    object_key,
    one_line,
)
from parsec_server.backend.blockstore.sigv4 import (
    EMPTY_PAYLOAD_SHA256,
    UNSIGNED_PAYLOAD,
    SigV4Signer,
    uri_encode,
)
from parsec_server.backend.config import S3BlockstoreConfig, StartupError
from parsec_server.backend.readiness import CheckOutcome, exception_outcome, failed

# Error codes meaning "no such object": a bodiless answer gives only its status code
# (`404`); GetObject says `NoSuchKey`. A missing *bucket* (`NoSuchBucket`) is a broken
# store, not a missing block.
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

# Connections kept open to the endpoint, shared by all the server's concurrent requests.
MAX_POOL_CONNECTIONS = 50
# Seconds an idle pooled connection is kept (aiobotocore's default).
KEEPALIVE_TIMEOUT = 12.0

# Answers tried again (the botocore "standard" retry mode's transient and throttling
# answers), while attempts remain: by status code, or by the error code of the body.
_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
_RETRIED_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "EC2ThrottledException",
    }
)
_ERROR_CODE = re.compile(rb"<Code>([^<]*)</Code>")


class S3RequestError(Exception):
    """An answer other than 2xx (after the retries)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        match = _ERROR_CODE.search(body)
        # As botocore: no error code in the body (HeadObject has none) -> the status code.
        self.code = match.group(1).decode(errors="replace") if match else str(status)
        super().__init__(f"{status} {self.code}")


def _ssl_context() -> ssl.SSLContext:
    """The CAs botocore trusts: `AWS_CA_BUNDLE` if set, else certifi's bundle."""
    cafile = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
    return ssl.create_default_context(cafile=cafile)


def _amz_date() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


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
    type_name = "S3"

    def __init__(
        self,
        client: Any,
        session: aiohttp.ClientSession,
        config: S3BlockstoreConfig,
        timeouts: RemoteTimeouts,
    ) -> None:
        self._client = client  # aiobotocore, for the start-up check
        self._session = session  # the hot calls
        self._timeouts = timeouts
        self._bucket = config.bucket
        self._closed = False
        self._signer = SigV4Signer(config.key, config.secret, config.region)
        parts = urlsplit(s3_endpoint(config))
        self._https = parts.scheme == "https"
        self._host = parts.netloc.rpartition("@")[2]
        self._origin = f"{parts.scheme}://{self._host}"
        # Path-style: `<endpoint path>/<bucket>/`, then the key.
        self._prefix = uri_encode(f"{parts.path.rstrip('/')}/{config.bucket}/", encode_slash=False)

    async def _request(self, method: str, key: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of a 2xx answer, retried as botocore's standard mode does;
        S3RequestError for any other answer."""
        path = self._prefix + uri_encode(key, encode_slash=False)
        url = yarl.URL(self._origin + path, encoded=True)
        if body is None:
            payload_hash = EMPTY_PAYLOAD_SHA256
        elif self._https:  # TLS protects the payload, as botocore does for S3 over HTTPS
            payload_hash = UNSIGNED_PAYLOAD
        else:
            payload_hash = hashlib.sha256(body).hexdigest()
        attempt = 1
        while True:
            headers = self._signer.sign(
                method, path, {"Host": self._host}, payload_hash, _amz_date()
            )
            try:
                async with self._session.request(
                    method, url, headers=headers, data=body
                ) as response:
                    status = response.status
                    data = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                if attempt >= self._timeouts.attempts:
                    raise
            else:
                if 200 <= status < 300:
                    return status, data
                error = S3RequestError(status, data)
                if attempt >= self._timeouts.attempts or not (
                    status in _RETRIED_STATUSES or error.code in _RETRIED_CODES
                ):
                    raise error
            # botocore's exponential backoff with full jitter: up to 1 s, then 2 s...
            await asyncio.sleep(random.random() * 2 ** (attempt - 1))
            attempt += 1

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
        """Open the clients without any request (`start` checks the bucket too)."""
        try:
            context = await asyncio.to_thread(_ssl_context)  # reads CA files
        except Exception as exc:  # unreadable CA bundle
            raise StartupError(f"Cannot use {_where(config)}: {one_line(exc)}") from exc
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
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=MAX_POOL_CONNECTIONS, ssl=context, keepalive_timeout=KEEPALIVE_TIMEOUT
            ),
            timeout=aiohttp.ClientTimeout(sock_connect=timeouts.connect, sock_read=timeouts.read),
            # No Content-Type or Accept-Encoding of aiohttp's own; bodies as stored.
            skip_auto_headers=("Content-Type", "Accept-Encoding"),
            auto_decompress=False,
            # HTTP(S)_PROXY / NO_PROXY, as the AWS SDK honours them.
            trust_env=True,
        )
        return cls(client, session, config, timeouts)

    async def check_ready(self, within: float) -> CheckOutcome:
        """HeadBucket, as at start-up."""
        try:
            async with asyncio.timeout(within):
                await self._client.head_bucket(Bucket=self._bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return failed(f"HTTP {status}", f"HeadBucket: {_describe(exc)}", type=self.type_name)
        except Exception as exc:
            return exception_outcome(exc, type=self.type_name)
        return CheckOutcome(True, {"type": self.type_name})

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._session.close()
            finally:
                await self._client.close()

    async def create(
        self, organization_id: str, block_id: uuid.UUID, data: bytes
    ) -> BlockStoreBadOutcome | None:
        key = object_key(organization_id, block_id)
        try:
            async with asyncio.timeout(self._timeouts.operation):
                await self._request("PUT", key, data)  # replaces a failed attempt's object
        except Exception as exc:  # any failure of the store is the `timeout` reply
            log_unavailable("s3", "create", key, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return None

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes | BlockStoreBadOutcome:
        key = object_key(organization_id, block_id)
        try:
            async with asyncio.timeout(self._timeouts.operation):
                _, data = await self._request("GET", key)
        except S3RequestError as exc:
            if exc.code in _NOT_FOUND_CODES:
                return BlockStoreBadOutcome.NOT_FOUND
            log_unavailable("s3", "read", key, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        except Exception as exc:
            log_unavailable("s3", "read", key, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return data

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        key = object_key(organization_id, block_id)
        try:
            async with asyncio.timeout(self._timeouts.operation):
                await self._request("DELETE", key)
        except S3RequestError as exc:
            if exc.code in _NOT_FOUND_CODES:
                return None  # S3 itself answers 204 for a missing key; some stores 404
            log_unavailable("s3", "delete", key, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        except Exception as exc:
            log_unavailable("s3", "delete", key, exc)
            return BlockStoreBadOutcome.UNAVAILABLE
        return None
