"""Real backing stores on loopback for the blockstore tests.

S3: moto's server (`python -m moto.server`, one process per store so that a store can be
stopped for real) over HTTPS, with a certificate from a private `trustme` CA that the
client trusts through `AWS_CA_BUNDLE`, as the guide's self-signed setup.
Swift: see `swift_standin.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiobotocore.session import get_session  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.blockstore.remote import RemoteTimeouts
from parsec_server.backend.config import S3BlockstoreConfig
from tests.fixtures import free_port

REGION = "region1"
ACCESS_KEY = "dummy-user"
SECRET_KEY = "dummy-password"
CLIENT_CLOSE_DELAY = 0.1  # seconds: see `MotoS3Server.client`
SERVER_START_TIMEOUT = 15.0

# Bounds small enough for fast tests of down or silent stores.
FAST_TIMEOUTS = RemoteTimeouts(connect=1.0, read=1.0, attempts=2, operation=3.0)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # what clients trust (AWS_CA_BUNDLE)
    cert_chain: Path  # the server's certificate chain
    key: Path  # the server's private key


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("s3-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    cert.private_key_pem.write_to_path(str(files.key))
    for index, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(files.cert_chain), append=index > 0)
    return files


@pytest.fixture
def aws_ca_bundle(tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The private CA trusted by S3 clients created during the test."""
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls_files.ca))
    return tls_files.ca


# `moto_server ARGS`, killed by the kernel if the test process dies without cleaning up
# (Linux's parent-death signal), so that no server outlives an interrupted test run.
_MOTO_LAUNCHER = """
import ctypes, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
from moto.server import main
main(sys.argv[1:])
"""


@functools.cache
def _session() -> Any:
    return get_session()  # one for the tests' own clients: models are loaded once


class MotoS3Server:
    """One moto S3 server process serving HTTPS on a loopback port."""

    def __init__(self, tls: TlsFiles) -> None:
        self._tls = tls
        self.port = free_port()
        self.endpoint_url = f"https://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # fmt: off
        arguments = [
            "-H", "127.0.0.1", "-p", str(self.port),
            "-c", str(self._tls.cert_chain), "-k", str(self._tls.key),
        ]
        # fmt: on
        command = [sys.executable, "-c", _MOTO_LAUNCHER, *arguments]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
        )

    def wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill the process: every connection to it is gone at once, as in a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def config(self, bucket: str) -> S3BlockstoreConfig:
        return S3BlockstoreConfig(
            endpoint_url=self.endpoint_url,
            region=REGION,
            bucket=bucket,
            key=ACCESS_KEY,
            secret=SECRET_KEY,
        )

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        """An aiobotocore client to look inside the store. Once it is closed, the event
        loop runs a moment longer: its TLS connections finish closing (otherwise, when
        `asyncio.run` ends right after, a transport left unclosed warns when collected,
        which fails whichever test is running then)."""
        async with _session().create_client(
            "s3",
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ) as client:
            yield client
        await asyncio.sleep(CLIENT_CLOSE_DELAY)

    async def create_bucket(self, bucket: str) -> None:
        async with self.client() as client:
            await client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
            )

    async def delete_bucket(self, bucket: str) -> None:
        async with self.client() as client:
            await client.delete_bucket(Bucket=bucket)

    async def put_object(self, bucket: str, key: str, data: bytes) -> None:
        async with self.client() as client:
            await client.put_object(Bucket=bucket, Key=key, Body=data)

    async def get_object(self, bucket: str, key: str) -> bytes:
        async with self.client() as client:
            response = await client.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data

    async def keys(self, bucket: str) -> list[str]:
        async with self.client() as client:
            response = await client.list_objects_v2(Bucket=bucket)
            return sorted(item["Key"] for item in response.get("Contents", []))

    async def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of the bucket (one client for all)."""
        found = {}
        async with self.client() as client:
            response = await client.list_objects_v2(Bucket=bucket)
            for item in response.get("Contents", []):
                reply = await client.get_object(Bucket=bucket, Key=item["Key"])
                async with reply["Body"] as body:
                    found[item["Key"]] = await body.read()
        return found


MotoFactory = Callable[[int], list[MotoS3Server]]


@pytest.fixture
def moto_servers(tls_files: TlsFiles, aws_ca_bundle: Path) -> Iterator[MotoFactory]:
    """`moto_servers(n)`: n fresh S3 servers, started together, killed at teardown."""
    started: list[MotoS3Server] = []

    def factory(count: int) -> list[MotoS3Server]:
        servers = [MotoS3Server(tls_files) for _ in range(count)]
        for server in servers:
            server.start()
            started.append(server)
        for server in servers:
            server.wait_ready()
        return servers

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_moto(tls_files: TlsFiles) -> Iterator[MotoS3Server]:
    """One S3 server for the tests that do not stop it (each gets its own bucket)."""
    server = MotoS3Server(tls_files)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class S3Bucket:
    server: MotoS3Server
    name: str

    @property
    def config(self) -> S3BlockstoreConfig:
        return self.server.config(self.name)

    async def keys(self) -> list[str]:
        return await self.server.keys(self.name)

    async def get_object(self, key: str) -> bytes:
        return await self.server.get_object(self.name, key)


@pytest.fixture
async def s3_bucket(shared_moto: MotoS3Server, aws_ca_bundle: Path) -> S3Bucket:
    """A fresh bucket on the shared S3 server."""
    bucket = S3Bucket(shared_moto, f"parsec-{uuid.uuid4().hex[:12]}")
    await shared_moto.create_bucket(bucket.name)
    return bucket


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never answers (a hung store)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    yield port
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()
