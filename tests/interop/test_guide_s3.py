"""The guide's S3 section, as a new administrator follows it, with the unmodified Parsec
2.0.0 client, then objects exchanged between our server and the reference server.

The S3 service is moto's server over HTTPS with its own self-signed CA (not the one of
the Parsec server's certificate), trusted through `AWS_CA_BUNDLE` only; the bucket is the
guide's `parsec`. Our server runs as in the other guide tests (our `parsec` command,
PostgreSQL, TLS), with `PARSEC_BLOCKSTORE` set the way the guide's shell line sets it.

1. One bucket: the reference client writes files, a second user reads them back from a
   fresh data folder; the bucket holds one object `<organization>/<block uuid>` per block
   the server recorded, none of them with the plaintext, and no block is in PostgreSQL.
2. RAID5 of three buckets (each on its own S3 server): one S3 server stopped after the
   write, the files are still read back from a fresh data folder.
3. Objects are interchangeable: a block stored by the reference server reads back through
   our S3 blockstore, one stored by our server through the reference's S3 blockstore.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
import trustme

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID
from parsec_server.backend.blockstore.base import BlockStoreBadOutcome
from parsec_server.backend.blockstore.s3 import S3BlockStore
from parsec_server.backend.config import S3BlockstoreConfig
from parsec_server.cli.blockstore_params import parse_single_blockstore
from parsec_server.client import organization as client_organization
from parsec_server.client.realm import create_realm
from tests.backend.blockstore.conftest import MotoS3Server
from tests.backend.blockstore.conftest import TlsFiles as S3TlsFiles
from tests.fixtures import free_port
from tests.fixtures.postgresql import create_empty_database, drop_database, run_async
from tests.interop.conftest import (
    COMMAND_TIMEOUT,
    PASSWORD,
    Cli,
    GuideServer,
    ServerProcess,
    TlsFiles,
    accepts_tls,
    bootstrap_organization,
    create_organization,
    describe,
    guide_environment,
    new_organization_name,
    run_command,
    run_guide_server,
)
from tests.interop.test_guide_workspaces import (
    BIG_FILE_SIZE,
    REFERENCE_SCRIPT,
    Member,
    Story,
    add_member,
    result_of,
    summary,
)

pytestmark = pytest.mark.interop

T = TypeVar("T")

BUCKET = "parsec"
# The guide's line, its port replaced by the S3 server's. Unquoted, the shell turns `\\`
# into `\`: the program receives `s3:localhost\:PORT:...`, an escaped colon in the endpoint.
GUIDE_BLOCKSTORE_LINE = (
    r"export PARSEC_BLOCKSTORE=s3:localhost\\:{port}:region1:parsec:user:password"
)
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
OBJECT_KEY = re.compile(rf"(?P<organization>[^/]+)/(?P<block_id>{UUID_PATTERN})")
BLOCK_SIZE = 512 * 1024  # the 2.0.0 client's block size (cleartext)

# The blocks our server recorded for an organization (metadata), and those it would have
# put in the POSTGRESQL blockstore.
BLOCKS_SQL = """
SELECT block.block_id, block.size
FROM block JOIN organization ON organization._id = block.organization
WHERE organization.organization_id = $1
"""
BLOCK_DATA_COUNT_SQL = "SELECT count(*) FROM block_data WHERE organization_id = $1"

# Run with the reference Python: the reference's own parsing of a `PARSEC_BLOCKSTORE` value
# and its own blockstore factory; reads one block and writes its bytes to a file.
REFERENCE_S3_READ_SCRIPT = """
import sys
from pathlib import Path
from uuid import UUID

import trio

from parsec.api.protocol import OrganizationID
from parsec.backend.blockstore import blockstore_factory
from parsec.backend.cli.run import _parse_blockstore_param
from parsec.backend.s3_blockstore import S3BlockStoreComponent

value, organization_id, block_id, output = sys.argv[1:]
store = blockstore_factory(_parse_blockstore_param(value))
assert isinstance(store, S3BlockStoreComponent), store
data = trio.run(store.read, OrganizationID(organization_id), UUID(block_id))
Path(output).write_bytes(data)
"""


def run_bounded(coro: Coroutine[Any, Any, T], timeout: float = COMMAND_TIMEOUT) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return run_async(bounded())


def guide_blockstore(port: int) -> str:
    """What the guide's shell line puts in `PARSEC_BLOCKSTORE` for an S3 server on `port`."""
    line = GUIDE_BLOCKSTORE_LINE.format(port=port)
    shell = run_command(["sh", "-c", f'{line}; printf %s "$PARSEC_BLOCKSTORE"'], os.environ)
    assert shell.returncode == 0, describe(shell)
    value = shell.stdout
    assert value == rf"s3:localhost\:{port}:region1:parsec:user:password", value
    return value


# --- S3 servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_tls(tmp_path_factory: pytest.TempPathFactory) -> S3TlsFiles:
    """A self-signed CA of the S3 service, distinct from the Parsec server's one."""
    folder = tmp_path_factory.mktemp("s3-tls")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    files = S3TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    issued.private_key_pem.write_to_path(str(files.key))
    files.cert_chain.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    return files


S3Factory = Callable[[int], list[MotoS3Server]]


@pytest.fixture(scope="module")
def start_s3(s3_tls: S3TlsFiles) -> Iterator[S3Factory]:
    """`start_s3(n)`: n S3 servers, each with the guide's bucket; stopped at the end. The
    tests' own S3 clients trust their CA through `AWS_CA_BUNDLE` too."""
    started: list[MotoS3Server] = []

    def start(count: int) -> list[MotoS3Server]:
        servers = [MotoS3Server(s3_tls) for _ in range(count)]
        for server in servers:
            server.start()
            started.append(server)
        for server in servers:
            server.wait_ready()
            run_bounded(server.create_bucket(BUCKET))
        return servers

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(s3_tls.ca))
        try:
            yield start
        finally:
            for server in started:
                server.stop()


@pytest.fixture(scope="module")
def s3_store(start_s3: S3Factory) -> MotoS3Server:
    [server] = start_s3(1)
    return server


@pytest.fixture(scope="module")
def raid5_stores(start_s3: S3Factory) -> list[MotoS3Server]:
    return start_s3(3)


# --- Parsec servers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_guide_server(
    postgresql_url: str,
    tls_files: TlsFiles,
    s3_tls: S3TlsFiles,
    s3_store: MotoS3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GuideServer]:
    """Our server with its blocks in the guide's bucket."""
    yield from run_guide_server(
        postgresql_url,
        tls_files,
        tmp_path_factory.mktemp("s3-server"),
        PARSEC_BLOCKSTORE=guide_blockstore(s3_store.port),
        AWS_CA_BUNDLE=str(s3_tls.ca),
    )


@pytest.fixture(scope="module")
def raid5_guide_server(
    postgresql_url: str,
    tls_files: TlsFiles,
    s3_tls: S3TlsFiles,
    raid5_stores: list[MotoS3Server],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GuideServer]:
    """Our server with a RAID5 of three buckets, the values whitespace-separated."""
    nodes = [
        f"RAID5:{index}:{guide_blockstore(store.port)}" for index, store in enumerate(raid5_stores)
    ]
    yield from run_guide_server(
        postgresql_url,
        tls_files,
        tmp_path_factory.mktemp("raid5-server"),
        PARSEC_BLOCKSTORE=" ".join(nodes),
        AWS_CA_BUNDLE=str(s3_tls.ca),
    )


@pytest.fixture(scope="module")
def reference_s3_server(
    postgresql_url: str,
    tls_files: TlsFiles,
    s3_tls: S3TlsFiles,
    s3_store: MotoS3Server,
    reference_venv: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GuideServer]:
    """The reference server set up by the same guide: its own migrated database, the same
    bucket settings."""
    folder = tmp_path_factory.mktemp("reference-s3-server")
    database_url = run_async(create_empty_database(postgresql_url))
    try:
        port = free_port()
        token = f"Gu1de-{secrets.token_hex(8)}"
        env = guide_environment(
            database_url,
            port,
            token,
            tls_files,
            folder,
            PARSEC_BLOCKSTORE=guide_blockstore(s3_store.port),
            AWS_CA_BUNDLE=str(s3_tls.ca),
        )
        parsec = reference_venv / "bin" / "parsec"
        migrate = run_command([parsec, "backend", "migrate"], env, cwd=folder)
        assert migrate.returncode == 0, describe(migrate)
        process = ServerProcess(
            [parsec, "backend", "run"], env, folder, ready=accepts_tls(port, tls_files), cwd=folder
        )
        process.start()
        try:
            yield GuideServer(port, token, database_url, env, tls_files, migrate, process)
        finally:
            process.stop()
    finally:
        run_async(drop_database(postgresql_url, database_url))


# --- Helpers --------------------------------------------------------------------------------


class OrganizationHost(Protocol):
    """A server the administration commands reach (a `GuideServer`, or any other)."""

    @property
    def addr(self) -> str: ...

    @property
    def administration_token(self) -> str: ...


def new_story(cli: Cli, server: OrganizationHost, folder: Path) -> Story:
    """Alice bootstraps a new organization (reference CLI) and welcomes Bob (reference
    library invitation). Neither a second device nor a third user is needed here."""
    name = new_organization_name()
    url = create_organization(cli, server.addr, server.administration_token, name)
    config_dir = folder / "alice-config"
    bootstrap = bootstrap_organization(
        cli, url, config_dir, "Alice Guide", "alice@example.com", "Alice's laptop"
    )
    assert bootstrap.returncode == 0, describe(bootstrap)
    whoami = {"config_dir": str(config_dir), "organization": name, "password": PASSWORD}
    device_id = result_of(cli.python(REFERENCE_SCRIPT, "whoami", json.dumps(whoami)))
    alice = Member("alice", config_dir, device_id["device_id"], folder / "alice-data")
    bob = add_member(cli, name, folder, alice, "bob", "user", "Bob Guide", "bob@example.com")
    return Story(cli, name, folder, alice=alice, alice2=alice, bob=bob, carol=bob)


def write_shared_files(story: Story, marker: bytes) -> dict[str, dict[str, Any]]:
    """Alice writes a small file and a 3 MB one (the marker in every block of both) in a
    new workspace shared with Bob; returns the expected tree."""
    big = bytearray(os.urandom(BIG_FILE_SIZE))
    for offset in range(1000, BIG_FILE_SIZE - len(marker), BLOCK_SIZE // 2):
        big[offset : offset + len(marker)] = marker
    contents = {"small.txt": b"A small file: " + marker + b"\n", "big.bin": bytes(big)}
    sources = story.folder / "sources"
    sources.mkdir()
    for name, data in contents.items():
        (sources / name).write_bytes(data)
    expected = {f"/{name}": summary(data) for name, data in contents.items()}
    created = story.run(
        "create_workspace",
        story.alice,
        name="S3 documents",
        files={name: str(sources / name) for name in contents},
    )
    assert created["files"] == expected
    story.workspace_id = created["workspace_id"]
    roles = story.run("share", story.alice, user_ids=[story.bob.user_id], role="CONTRIBUTOR")
    assert roles == {story.alice.user_id: "OWNER", story.bob.user_id: "CONTRIBUTOR"}
    return expected


@dataclass(frozen=True)
class RecordedBlocks:
    sizes: dict[str, int]  # block uuid: size, from the metadata
    in_postgresql: int  # rows of the POSTGRESQL blockstore


async def recorded_blocks(database_url: str, organization: str) -> RecordedBlocks:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(BLOCKS_SQL, organization)
        in_postgresql = await conn.fetchval(BLOCK_DATA_COUNT_SQL, organization)
    finally:
        await conn.close()
    return RecordedBlocks({str(row["block_id"]): row["size"] for row in rows}, in_postgresql)


def bucket_objects(store: MotoS3Server) -> dict[str, bytes]:
    return run_bounded(store.objects(BUCKET))


def block_ids_of(keys: list[str], organization: str) -> set[str]:
    """The block ids of the organization's object keys; every key must be well formed."""
    ids = set()
    for key in keys:
        match = OBJECT_KEY.fullmatch(key)
        assert match is not None, key
        if match["organization"] == organization:
            ids.add(match["block_id"])
    return ids


async def store_block(server: GuideServer, data: bytes) -> tuple[str, uuid.UUID]:
    """Through our client library: a new organization, a realm, one `block_create`."""
    addr = BackendAddr.from_url(server.addr)
    organization = new_organization_name()
    token = await client_organization.create_organization(
        addr, server.administration_token, organization
    )
    device = await client_organization.bootstrap_organization(
        addr, organization, token, ("alice@example.com", "Alice"), "laptop"
    )
    async with await device.connect() as conn:
        realm_id = await create_realm(conn, device)
        block_id = ID.new()
        reply = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=data)
    assert reply == {"status": "ok"}, reply
    return organization, block_id.uuid


# --- 1. One S3 bucket -----------------------------------------------------------------------


def test_files_written_through_our_server_are_encrypted_objects_in_the_s3_bucket(
    s3_guide_server: GuideServer,
    s3_store: MotoS3Server,
    reference_cli: Cli,
    tmp_path: Path,
) -> None:
    story = new_story(reference_cli, s3_guide_server, tmp_path)
    marker = f"S3-guide-marker-{uuid.uuid4().hex}".encode()
    expected = write_shared_files(story, marker)

    seen_by_bob = story.read_fresh(story.bob)

    assert seen_by_bob["files"] == expected
    objects = bucket_objects(s3_store)
    recorded = run_bounded(recorded_blocks(s3_guide_server.database_url, story.organization))
    # small file: one block; 3 MB: six blocks of 512 KiB
    assert len(recorded.sizes) >= 7
    assert recorded.in_postgresql == 0
    # One object `<organization>/<block uuid>` per recorded block, with its bytes
    assert block_ids_of(list(objects), story.organization) == set(recorded.sizes)
    for block_id, size in recorded.sizes.items():
        assert len(objects[f"{story.organization}/{block_id}"]) == size
    assert sum(recorded.sizes.values()) > BIG_FILE_SIZE
    # ... encrypted: the plaintext is nowhere
    assert [key for key, data in objects.items() if marker in data] == []


# --- 2. RAID5 of three S3 buckets -----------------------------------------------------------


def test_raid5_of_three_s3_buckets_serves_the_files_with_one_bucket_down(
    raid5_guide_server: GuideServer,
    raid5_stores: list[MotoS3Server],
    reference_cli: Cli,
    tmp_path: Path,
) -> None:
    story = new_story(reference_cli, raid5_guide_server, tmp_path)
    marker = f"RAID5-guide-marker-{uuid.uuid4().hex}".encode()
    expected = write_shared_files(story, marker)

    recorded = run_bounded(recorded_blocks(raid5_guide_server.database_url, story.organization))
    assert len(recorded.sizes) >= 7
    data_0, data_1, parity = (bucket_objects(store) for store in raid5_stores)
    for objects in (data_0, data_1, parity):
        assert block_ids_of(list(objects), story.organization) == set(recorded.sizes)
        assert [key for key, data in objects.items() if marker in data] == []
    # Chunks of the RAID5 layout: length prefix, data split in two, XOR parity last
    for block_id, size in recorded.sizes.items():
        key = f"{story.organization}/{block_id}"
        assert len(data_0[key]) == len(data_1[key]) == len(parity[key]) == -(-(size + 4) // 2)
        assert int.from_bytes((data_0[key] + data_1[key])[:4], "big") == size
        assert bytes(a ^ b for a, b in zip(data_0[key], data_1[key], strict=True)) == parity[key]

    raid5_stores[1].stop()  # a data node: its chunks must be rebuilt from the parity

    assert story.read_fresh(story.bob)["files"] == expected
    assert story.read_fresh(story.alice)["files"] == expected


# --- 3. Objects shared with the reference server --------------------------------------------


def test_block_stored_by_the_reference_server_reads_back_through_our_s3_blockstore(
    reference_s3_server: GuideServer,
    s3_store: MotoS3Server,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CAFILE", str(tls_files.ca))
    data = os.urandom(300_000)
    organization, block_id = run_bounded(store_block(reference_s3_server, data))

    config = parse_single_blockstore(reference_s3_server.env["PARSEC_BLOCKSTORE"])
    assert isinstance(config, S3BlockstoreConfig)

    async def read() -> bytes | BlockStoreBadOutcome:
        store = await S3BlockStore.start(config)
        try:
            return await store.read(organization, block_id)
        finally:
            await store.close()

    assert run_bounded(read()) == data


def test_block_stored_by_our_server_reads_back_through_the_reference_s3_blockstore(
    s3_guide_server: GuideServer,
    reference_venv: Path,
    tls_files: TlsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CAFILE", str(tls_files.ca))
    data = os.urandom(300_000)
    organization, block_id = run_bounded(store_block(s3_guide_server, data))

    output = tmp_path / "block.bin"
    read = run_command(
        [
            reference_venv / "bin" / "python",
            "-c",
            REFERENCE_S3_READ_SCRIPT,
            s3_guide_server.env["PARSEC_BLOCKSTORE"],
            organization,
            str(block_id),
            output,
        ],
        s3_guide_server.env,
        cwd=tmp_path,
    )
    assert read.returncode == 0, describe(read)
    assert output.read_bytes() == data
